"""The PACS as publication asks it: one study with its series and instances (C-FIND, three levels).

Always asked live, never from our index: publication must describe what the PACS holds now
(images still arriving, instances rejected since the last indexing run).
"""

from __future__ import annotations

from pydicom.dataset import Dataset

from drimbox.dimse.connection import PeerConnector
from drimbox.dimse.find import STUDY_KEYS, PacsQuery
from drimbox.publish.assembly import PacsInstance, PacsSeries, PacsStudy


class PacsCatalog:
    """`StudyCatalog` over C-FIND to one PACS peer."""

    def __init__(self, connector: PeerConnector, peer: str) -> None:
        self.query = PacsQuery(connector, peer)

    def study(self, study_uid: str) -> PacsStudy | None:
        identifier = Dataset()
        for key in STUDY_KEYS:
            setattr(identifier, key, None)
        identifier.StudyInstanceUID = study_uid
        matches = [m for m in self.query.find("STUDY", identifier) if m.get("StudyInstanceUID") == study_uid]
        if not matches:
            return None
        top = matches[0]
        series = []
        for match in self.query.series(study_uid):
            uid = str(match.get("SeriesInstanceUID", ""))
            instances = tuple(
                PacsInstance(
                    str(i.get("SOPClassUID", "")), str(i.get("SOPInstanceUID", "")), _int(i.get("InstanceNumber"))
                )
                for i in self.query.instances(study_uid, uid)
            )
            if instances:
                series.append(
                    PacsSeries(
                        uid,
                        instances,
                        _text(match, "Modality"),
                        _text(match, "SeriesDescription"),
                        _int(match.get("SeriesNumber")),
                    )
                )
        return PacsStudy(
            study_uid=study_uid,
            series=tuple(series),
            patient_id=_text(top, "PatientID"),
            issuer_of_patient_id=_text(top, "IssuerOfPatientID"),
            accession_number=_text(top, "AccessionNumber"),
            study_date=_text(top, "StudyDate"),
            study_time=_text(top, "StudyTime"),
            study_id=_text(top, "StudyID"),
            description=_text(top, "StudyDescription"),
            referring_physician=_text(top, "ReferringPhysicianName"),
            expected_instances=_int(top.get("NumberOfStudyRelatedInstances")),
        )


def _text(match: Dataset, key: str) -> str:
    value = match.get(key)
    return "" if value is None else str(value)


def _int(value: object) -> int | None:
    try:
        return int(str(value)) if value not in (None, "") else None
    except ValueError:
        return None
