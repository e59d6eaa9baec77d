"""Study assembly: what the PACS holds for the study a report names, and whether it may be published.

Images often reach the PACS after the report is validated, and a report can name the wrong
patient or exam. Both cases end in `NotReady` with a reason an operator can act on; the worker
looks again later instead of publishing a partial or wrong manifest (DRIM-M W1 consistency
checks, which the PoC silently skipped).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Protocol

from drimbox.report.model import Report


@dataclass(frozen=True)
class PacsInstance:
    sop_class_uid: str
    sop_uid: str
    number: int | None = None


@dataclass(frozen=True)
class PacsSeries:
    series_uid: str
    instances: tuple[PacsInstance, ...]
    modality: str = ""
    description: str = ""
    number: int | None = None


@dataclass(frozen=True)
class PacsStudy:
    """A study as the PACS answers C-FIND at STUDY, SERIES and IMAGE level.

    `expected_instances` is NumberOfStudyRelatedInstances when the PACS gives it: fewer
    instances at IMAGE level means some are still arriving.
    """

    study_uid: str
    series: tuple[PacsSeries, ...]
    patient_id: str = ""
    issuer_of_patient_id: str = ""
    accession_number: str = ""
    study_date: str = ""
    study_time: str = ""
    study_id: str = ""
    description: str = ""
    referring_physician: str = ""
    expected_instances: int | None = None

    @property
    def instance_count(self) -> int:
        return sum(len(series.instances) for series in self.series)


class StudyCatalog(Protocol):
    """The PACS as publication sees it (C-FIND); raises DimseError when it cannot be asked."""

    def study(self, study_uid: str) -> PacsStudy | None: ...


class NotReady(Exception):
    """The study cannot be published yet; `reason` says why, for the operator."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def assemble(
    study: PacsStudy | None,
    report: Report,
    study_uid: str,
    rejected: frozenset[str] = frozenset(),
    check_accession: bool = True,
    check_patient_id: bool = True,
) -> PacsStudy:
    """The study to publish, without rejected instances, once it matches the report.

    Raises NotReady when the study is absent or still arriving, or when its accession number or
    patient id contradicts the report (the PACS may be corrected: the worker keeps looking).
    """
    if study is None:
        raise NotReady(f"study {study_uid} is not in the PACS yet")
    found = study.instance_count
    if study.expected_instances is not None and found < study.expected_instances:
        raise NotReady(f"study {study_uid}: {found} of {study.expected_instances} instances found")
    study = _without(study, rejected)
    if study.instance_count == 0:
        raise NotReady(f"study {study_uid} has no instance in the PACS")
    unknown = sum(1 for series in study.series for i in series.instances if not i.sop_class_uid)
    if unknown:
        raise NotReady(f"the PACS gave no SOP Class UID for {unknown} instance(s) of study {study_uid} "
                       "(retrieve the study once so the box learns them)")  # fmt: skip
    accession = report.accession.extension if report.accession else ""
    if check_accession and accession and study.accession_number != accession:
        raise NotReady(
            f"accession number differs: report {accession!r}, PACS {study.accession_number!r} (study {study_uid})"
        )
    ipp = report.patient.ipp.extension if report.patient.ipp else ""
    if check_patient_id and ipp and study.patient_id != ipp:
        raise NotReady(f"patient id differs: report IPP {ipp!r}, PACS PatientID {study.patient_id!r}")
    return study


def _without(study: PacsStudy, rejected: frozenset[str]) -> PacsStudy:
    if not rejected:
        return study
    kept = []
    for series in study.series:
        instances = tuple(i for i in series.instances if i.sop_uid not in rejected)
        if instances:
            kept.append(replace(series, instances=instances))
    return replace(study, series=tuple(kept))


def remaining_instances(study: PacsStudy | None, rejected: frozenset[str]) -> int:
    """How many instances are left once rejected ones are set aside (IOCM: replace or delete)."""
    return 0 if study is None else _without(study, rejected).instance_count
