"""A KOS manifest as data, independent of its DICOM encoding (DRIM-M §4.3).

`build.py` writes it as a DICOM Part-10 file and `parse.py` reads one back into the same model,
so what we publish and what another box sends us are compared in one vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

#: Key Object Selection Document Storage.
KOS_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.88.59"
#: Issuer of Patient ID written with the INS (DRIM-M §4.3).
INS_ISSUER_NAME = "ASIP-SANTE-INS-NIR"


@dataclass(frozen=True)
class ReferencedInstance:
    sop_class_uid: str
    sop_instance_uid: str


@dataclass(frozen=True)
class ManifestSeries:
    """One series of the evidence: where to fetch it (our WADO-RS series URL) and what it holds."""

    series_uid: str
    retrieve_url: str
    instances: tuple[ReferencedInstance, ...]
    modality: str = ""
    description: str = ""


@dataclass(frozen=True)
class ManifestPatient:
    """The patient as the KOS names them: the INS and its issuer, never the local IPP.

    `name` is a DICOM PN (`FAMILY^GIVEN`); `ins_oid` is the INS OID (test or production).
    """

    ins: str
    ins_oid: str
    name: str
    birth_date: str = ""
    sex: str = ""
    issuer_name: str = INS_ISSUER_NAME


@dataclass(frozen=True)
class ManifestRequest:
    """The Referenced Request Sequence item: accession and placer order with their issuer OIDs."""

    study_uid: str
    accession_number: str = ""
    accession_issuer: str = ""
    placer_order: str = ""
    placer_order_issuer: str = ""
    requested_procedure_id: str = ""
    requested_procedure_description: str = ""


@dataclass(frozen=True)
class Manifest:
    """A whole DRIM-M KOS for one study.

    `description` is the TEXT content item (113012 "Key Object Description"); `created` gives
    InstanceCreation/Content/Series date and time (and the XDS creationTime).
    """

    sop_instance_uid: str
    series_instance_uid: str
    study_uid: str
    created: datetime
    patient: ManifestPatient
    series: tuple[ManifestSeries, ...]
    request: ManifestRequest | None = None
    series_number: int = 1
    instance_number: int = 1
    study_date: str = ""
    study_time: str = ""
    study_id: str = ""
    study_description: str = ""
    referring_physician: str = ""
    institution_name: str = ""
    manufacturer: str = "drimbox"
    description: str = ""

    @property
    def instance_count(self) -> int:
        return sum(len(s.instances) for s in self.series)

    @property
    def modalities(self) -> tuple[str, ...]:
        """Distinct series modalities, in series order (the XDS eventCodeList needs them)."""
        seen: dict[str, None] = {}
        for series in self.series:
            if series.modality:
                seen.setdefault(series.modality, None)
        return tuple(seen)
