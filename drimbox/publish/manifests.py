"""The KOS manifest of one study, composed from the report (identity, order) and the PACS (images).

Identity comes from the validated report, never from the PACS: the KOS names the patient by
INS, which the PACS may not hold (decisions: "Identity"). Retrieve URLs point at our own public
WADO-RS series URL, built from configuration only.
"""

from __future__ import annotations

from datetime import datetime

from drimbox.kos.model import (
    Manifest,
    ManifestPatient,
    ManifestRequest,
    ManifestSeries,
    ReferencedInstance,
)
from drimbox.kos.text import describe
from drimbox.publish.assembly import PacsInstance, PacsStudy
from drimbox.report.model import Report


def compose(
    report: Report,
    study: PacsStudy,
    *,
    sop_instance_uid: str,
    series_instance_uid: str,
    created: datetime,
    wado_prefix: str,
    institution_name: str,
    series_number: int,
    instance_number: int = 1,
) -> Manifest:
    """The DRIM-M manifest for `study` (already assembled: complete, consistent, rejected removed)."""
    series = tuple(
        ManifestSeries(
            series_uid=s.series_uid,
            retrieve_url=f"{wado_prefix}/studies/{study.study_uid}/series/{s.series_uid}",
            instances=tuple(ReferencedInstance(i.sop_class_uid, i.sop_uid) for i in _ordered(s.instances)),
            modality=s.modality,
            description=s.description,
        )
        for s in sorted(study.series, key=lambda s: (s.number is None, s.number or 0, s.series_uid))
    )
    reported = next((s for s in report.studies if s.study_uid == study.study_uid), None)
    act = reported.code.display if reported and reported.code else ""
    return Manifest(
        sop_instance_uid=sop_instance_uid,
        series_instance_uid=series_instance_uid,
        study_uid=study.study_uid,
        created=created,
        patient=_patient(report),
        series=series,
        request=_request(report, study.study_uid),
        series_number=series_number,
        instance_number=instance_number,
        study_date=study.study_date,
        study_time=study.study_time,
        study_id=study.study_id,
        study_description=study.description,
        referring_physician=study.referring_physician,
        institution_name=institution_name,
        manufacturer="drimbox",
        description=describe(study.description, act, series),
    )


def _ordered(instances: tuple[PacsInstance, ...]) -> list[PacsInstance]:
    return sorted(instances, key=lambda i: (i.number is None, i.number or 0, i.sop_uid))


def _patient(report: Report) -> ManifestPatient:
    patient = report.patient
    given = patient.given.split(" ")[0] if patient.given else ""
    name = f"{patient.birth_family}^{given}" if given else patient.birth_family
    return ManifestPatient(
        ins=patient.ins.extension,
        ins_oid=patient.ins.root,
        name=name,
        birth_date=patient.birth_date[:8],
        sex=patient.sex if patient.sex in ("F", "M", "O") else "O" if patient.sex else "",
    )


def _request(report: Report, study_uid: str) -> ManifestRequest:
    accession = report.accession
    order = report.order
    return ManifestRequest(
        study_uid=study_uid,
        accession_number=accession.extension if accession else "",
        accession_issuer=accession.root if accession else "",
        placer_order=order.extension if order else "",
        placer_order_issuer=order.root if order else "",
    )
