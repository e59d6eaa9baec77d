"""The PACS as publication asks it: one study with its series and instances (C-FIND, three levels).

Always asked live, never from our index: publication must describe what the PACS holds now
(images still arriving, instances rejected since the last indexing run).
"""

from __future__ import annotations

from dataclasses import replace

from pydicom.dataset import Dataset

from drimbox.dimse.connection import PeerConnector
from drimbox.dimse.find import STUDY_KEYS, PacsQuery
from drimbox.index.records import integer, text
from drimbox.index.repository import IndexRepository
from drimbox.publish.assembly import PacsInstance, PacsSeries, PacsStudy


class PacsCatalog:
    """`StudyCatalog` over C-FIND to one PACS peer."""

    def __init__(self, connector: PeerConnector, peer: str, index: IndexRepository | None = None) -> None:
        self.query = PacsQuery(connector, peer)
        self.index = index

    def _sop_classes(self, study_uid: str) -> dict[str, str]:
        """SOP classes our store knows, for PACS that do not return SOPClassUID at IMAGE level."""
        if self.index is None:
            return {}
        return {held.sop_uid: held.sop_class_uid for held in self.index.held(study_uid)}

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
        known: dict[str, str] | None = None
        seen: set[str] = set()
        for match in self.query.series(study_uid):
            uid = text(match, "SeriesInstanceUID")
            if uid in seen:  # some PACS answer one SERIES match per instance
                continue
            seen.add(uid)
            instances = tuple(
                PacsInstance(text(i, "SOPClassUID"), text(i, "SOPInstanceUID"), integer(i, "InstanceNumber"))
                for i in self.query.instances(study_uid, uid)
            )
            if any(not i.sop_class_uid for i in instances):
                known = self._sop_classes(study_uid) if known is None else known
                instances = tuple(replace(i, sop_class_uid=known.get(i.sop_uid, "")) for i in instances)
            if instances:
                series.append(
                    PacsSeries(
                        uid,
                        instances,
                        text(match, "Modality"),
                        text(match, "SeriesDescription"),
                        integer(match, "SeriesNumber"),
                    )
                )
        return PacsStudy(
            study_uid=study_uid,
            series=tuple(series),
            patient_id=text(top, "PatientID"),
            issuer_of_patient_id=text(top, "IssuerOfPatientID"),
            accession_number=text(top, "AccessionNumber"),
            study_date=text(top, "StudyDate"),
            study_time=text(top, "StudyTime"),
            study_id=text(top, "StudyID"),
            description=text(top, "StudyDescription"),
            referring_physician=text(top, "ReferringPhysicianName", 324),
            expected_instances=integer(top, "NumberOfStudyRelatedInstances"),
        )
