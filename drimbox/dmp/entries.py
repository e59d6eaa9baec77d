"""The DocumentEntries of a DRIM-M submission: KOS, optional CDA report, XAdES signature (DRIM-M §4.4).

Every entry has the sample's slots in its order, except `urn:ihe:iti:xds:2013:referenceIdList`,
which goes with the other slots: ebRIM 3.0 puts Slot before Name and Classification, and the
sample's trailing slot is only tolerated by the DMP.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from lxml import etree

from drimbox.config import DmpSettings, SiteSettings
from drimbox.dmp import codes
from drimbox.dmp.ebrim import coded, external_identifier, localized, new_id, slot, sub, xds_time, xds_time_from_hl7
from drimbox.errors import DmpRefused
from drimbox.publish.submission import DmpIssue, Submission
from drimbox.report.model import Code, Identifier, Professional, Report, ReportedStudy

#: DmpIssue code of a submission we refuse to build: the data must be fixed, resending will not help.
INVALID_METADATA = "drimbox:InvalidMetadata"


def invalid(message: str, location: str) -> DmpRefused:
    return DmpRefused(message, (DmpIssue(INVALID_METADATA, message, location=location),))


@dataclass(frozen=True)
class Parties:
    """Who the metadata names, already in the HL7 v2 forms XDS carries (XCN, XON, CX)."""

    author: str
    institution: str
    legal_authenticator: str
    patient_id: str
    source_patient_id: str
    patient_info: tuple[str, ...]
    facility: Code
    practice: Code


def parties(report: Report, settings: DmpSettings, site: SiteSettings) -> Parties:
    """Author (the report's, or the box as a device when `dmp.author = "device"`), patient, facility.

    `sourcePatientId` is the site's IPP (type PI) when the report has one, as IHE means it (the
    patient id in the source's own domain); the DMP sample's INS-as-PI is the fallback.
    """
    patient = report.patient
    if not patient.ins.root or not patient.ins.extension:
        raise invalid("the report names no INS for the patient", "recordTarget/patientRole/id")
    if not report.author.id.extension:
        raise invalid("the report's author has no RPPS/ADELI identifier", "author/assignedAuthor/id")
    ins = f"{_hl7(patient.ins.extension)}^^^&{patient.ins.root}&ISO"
    ipp = patient.ipp
    source_id = f"{_hl7(ipp.extension)}^^^&{ipp.root}&ISO^PI" if ipp and ipp.root and ipp.extension else f"{ins}^PI"
    info = [f"PID-5|{_hl7(patient.birth_family)}^{_hl7(patient.given)}^^^^^L"]
    if patient.birth_date:
        info.append(f"PID-7|{patient.birth_date[:8]}")
    if patient.sex:
        info.append(f"PID-8|{patient.sex}")
    author = _device_xcn(settings, site) if settings.author == "device" else person_xcn(report.author)
    legal = person_xcn(report.legal_authenticator) if report.legal_authenticator else ""
    facility = report.facility_type or Code(
        settings.facility_type_code,
        codes.FACILITY_TYPE_SYSTEM,
        codes.FACILITY_TYPE_NAMES.get(settings.facility_type_code, settings.facility_type_code),
    )
    practice = report.practice_setting or Code(
        settings.practice_setting_code,
        codes.PRACTICE_SETTING_SYSTEM,
        codes.PRACTICE_SETTING_NAMES.get(settings.practice_setting_code, settings.practice_setting_code),
    )
    organisation = report.author.organisation
    structure = organisation.extension if organisation and organisation.extension else site.structure_id
    name = report.author.organisation_name or site.name
    institution = f"{_hl7(name)}^^^^^&{codes.STRUCTURE_ROOT}&ISO^IDNST^^^{_hl7(structure)}"
    return Parties(author, institution, legal, f"{ins}^NH", source_id, tuple(info), facility, practice)


def person_xcn(person: Professional) -> str:
    """`<RPPS>^<family>^<given>^^^^^^&1.2.250.1.71.4.2.1&ISO^D^^^IDNPS` (CI-SIS XCN for a professional)."""
    root = person.id.root or codes.RPPS_ROOT
    return f"{_hl7(person.id.extension)}^{_hl7(person.family)}^{_hl7(person.given)}^^^^^^&{root}&ISO^D^^^IDNPS"


def _device_xcn(settings: DmpSettings, site: SiteSettings) -> str:
    """The box as author, shaped as the ANS validator sample's device (`^U^^^EI`).

    Its identifier is the CI-SIS internal form `3<structure id>/<local id>` under the RPPS root,
    the local id being our LPS id (or name): the DMP has no registry of devices to draw one from.
    """
    local = settings.lps_id or settings.lps_name
    return f"3{_hl7(site.structure_id)}/{_hl7(local)}^{_hl7(settings.lps_name)}^^^^^^^&{codes.RPPS_ROOT}&ISO^U^^^EI"


@dataclass(frozen=True)
class Document:
    """One document of an ITI-41: its entry id in the metadata, its XDS uniqueId, its exact bytes."""

    entry_id: str
    unique_id: str
    data: bytes


@dataclass(frozen=True)
class EntryKind:
    """What differs between the KOS, report and signature entries; the rest is common to all three."""

    mime_type: str
    creation_time: str
    language: str
    service_times: tuple[str, str]
    source_patient_id: str
    patient_info: tuple[str, ...]
    name: str
    description: str
    class_code: Code
    type_code: Code
    format_code: Code
    confidentiality: tuple[Code, ...]
    events: tuple[Code, ...]


def kos_kind(submission: Submission, who: Parties) -> EntryKind:
    """The KOS: uniqueId = SOP Instance UID, creationTime = when the KOS was made, N + visibility flags."""
    manifest, report = submission.manifest, submission.report
    if manifest.patient.ins != report.patient.ins.extension:
        raise invalid("the KOS and the report name different patients (INS)", "PatientID")
    service = _service_times(_study(report, manifest.study_uid))
    classes = (codes.KOS_CLASS, codes.KOS_TYPE, codes.KOS_FORMAT)
    confidentiality = (codes.NORMAL, *_flag_codes(submission))
    return EntryKind(
        "application/dicom",
        xds_time(manifest.created),
        "fr-FR",
        service,
        who.source_patient_id,
        who.patient_info,
        codes.KOS_NAME,
        "KOS",
        *classes,
        confidentiality,
        _events(submission),
    )


def report_kind(submission: Submission, who: Parties) -> EntryKind:
    """The CDA report (DRIM-M §4.4 "CR DocumentEntry"), when it goes with the KOS."""
    report = submission.report
    service = _service_times(_study(report, submission.manifest.study_uid))
    creation = xds_time_from_hl7(report.effective_time) or xds_time(submission.submitted_at)
    classes = (codes.REPORT_CLASS, codes.REPORT_TYPE, codes.REPORT_FORMAT)
    confidentiality = (report.confidentiality, *_flag_codes(submission))
    name = report.title or codes.REPORT_TYPE.display
    return EntryKind(
        "text/xml",
        creation,
        report.language or "fr-FR",
        service,
        who.source_patient_id,
        who.patient_info,
        name,
        codes.REPORT_CLASS.display,
        *classes,
        confidentiality,
        _events(submission),
    )


def signature_kind(submission: Submission, who: Parties) -> EntryKind:
    """The XAdES signature, hidden from patient and professionals, its times the submission's (DMP sample)."""
    now = xds_time(submission.submitted_at)
    classes = (codes.SIGNATURE_CLASS, codes.SIGNATURE_TYPE, codes.SIGNATURE_FORMAT)
    return EntryKind(
        "text/xml",
        now,
        "art",
        (now, now),
        who.patient_id,
        (),
        codes.SIGNATURE_PURPOSE.display,
        "",
        *classes,
        codes.SIGNATURE_CONFIDENTIALITY,
        (codes.SIGNATURE_PURPOSE,),
    )


def document_entry(
    objects: etree._Element,
    document: Document,
    kind: EntryKind,
    who: Parties,
    submission: Submission,
    settings: DmpSettings,
) -> None:
    """One ExtrinsicObject, slots and classifications in the DMP sample's order."""
    if not document.data:
        raise invalid(f"document {document.unique_id} is empty", "Document")
    entry_id = document.entry_id
    entry = sub(
        objects, "rim:ExtrinsicObject", id=entry_id, mimeType=kind.mime_type, objectType=codes.STABLE_DOCUMENT_ENTRY
    )
    slot(entry, "creationTime", kind.creation_time)
    slot(entry, "submissionTime", xds_time(submission.submitted_at))
    slot(entry, "languageCode", kind.language)
    if who.legal_authenticator:
        slot(entry, "legalAuthenticator", who.legal_authenticator)
    for name, value in zip(("serviceStartTime", "serviceStopTime"), kind.service_times, strict=True):
        if value:
            slot(entry, name, value)
    slot(entry, "sourcePatientId", kind.source_patient_id)
    slot(entry, "hash", hashlib.sha1(document.data).hexdigest())
    slot(entry, "size", str(len(document.data)))
    if kind.patient_info:
        slot(entry, "sourcePatientInfo", *kind.patient_info)
    slot(entry, "urn:ihe:iti:xds:2013:referenceIdList", *_reference_ids(submission, settings))
    localized(entry, "rim:Name", kind.name)
    localized(entry, "rim:Description", kind.description)
    author = sub(
        entry, "rim:Classification", classificationScheme=codes.ENTRY_AUTHOR, classifiedObject=entry_id, id=new_id()
    )
    slot(author, "authorPerson", who.author)
    slot(author, "authorInstitution", who.institution)
    coded(entry, codes.ENTRY_CLASS, entry_id, kind.class_code)
    coded(entry, codes.ENTRY_TYPE, entry_id, kind.type_code)
    for code in kind.confidentiality:
        coded(entry, codes.ENTRY_CONFIDENTIALITY, entry_id, code)
    coded(entry, codes.ENTRY_FORMAT, entry_id, kind.format_code)
    coded(entry, codes.ENTRY_FACILITY_TYPE, entry_id, who.facility)
    coded(entry, codes.ENTRY_PRACTICE_SETTING, entry_id, who.practice)
    for code in kind.events:
        coded(entry, codes.ENTRY_EVENT, entry_id, code)
    external_identifier(entry, codes.ENTRY_PATIENT_ID, entry_id, who.patient_id, "XDSDocumentEntry.patientId")
    external_identifier(entry, codes.ENTRY_UNIQUE_ID, entry_id, document.unique_id, "XDSDocumentEntry.uniqueId")


def _flag_codes(submission: Submission) -> tuple[Code, ...]:
    """One visibility code per MetaDMPMSS flag set to Y (CI-SIS: MASQUE_PS, INVISIBLE_PATIENT, INVISIBLE_REP_LEGAUX)."""
    flags = {name.upper(): value.strip().upper() for name, value in submission.flags.items()}
    return tuple(code for flag, code in codes.VISIBILITY_FLAGS.items() if flags.get(flag) == "Y")


def _study(report: Report, study_uid: str) -> ReportedStudy | None:
    for study in report.studies:
        if study.study_uid == study_uid:
            return study
    return report.studies[0] if report.studies else None


def _service_times(study: ReportedStudy | None) -> tuple[str, str]:
    if study is None:
        return "", ""
    return xds_time_from_hl7(study.start), xds_time_from_hl7(study.stop)


def _events(submission: Submission) -> tuple[Code, ...]:
    """The SNOMED CT regions of the report's serviceEvent under JDV_RegionAnatomique_CISIS (the scheme
    the DMP searches by; the sample's CCAM OID for the region is a PoC inconsistency, DRIM-M §4.4), then
    one code per series modality (JDV_ModaliteAcquisition_CISIS), in the DMP sample's order."""
    events: list[Code] = []
    study = _study(submission.report, submission.manifest.study_uid)
    for translation in study.translations if study else ():
        region = Code(translation.code, codes.REGION_SYSTEM, translation.display)
        if translation.system == codes.SNOMED_CT and region not in events:
            events.append(region)
    events += [Code(m, codes.MODALITY_SYSTEM, codes.MODALITY_NAMES.get(m, m)) for m in submission.manifest.modalities]
    return tuple(events)


def _reference_ids(submission: Submission, settings: DmpSettings) -> tuple[str, ...]:
    """Accession, study and order as CXi values (ITI TF-3 §4.2.3.2.23), the KOS's before the report's.

    The StudyInstanceUID is globally unique; its assigning authority is our `dmp.uid_root` (the
    PoC wrote a placeholder), or the ANS root 1.2.250.1.213 when none is configured.
    """
    manifest, report = submission.manifest, submission.report
    request = manifest.request
    accession = Identifier(request.accession_issuer, request.accession_number) if request else None
    if accession is None or not (accession.root and accession.extension):
        accession = report.accession
    order = Identifier(request.placer_order_issuer, request.placer_order) if request else None
    if order is None or not (order.root and order.extension):
        order = report.order
    values = []
    if accession and accession.root and accession.extension:
        values.append(f"{_hl7(accession.extension)}^^^&{accession.root}&ISO^urn:ihe:iti:xds:2013:accession")
    authority = settings.uid_root or codes.DEFAULT_STUDY_AUTHORITY
    values.append(f"{manifest.study_uid}^^^&{authority}&ISO^urn:ihe:iti:xds:2016:studyInstanceUID")
    if order and order.root and order.extension:
        values.append(f"{_hl7(order.extension)}^^^&{order.root}&ISO^urn:ihe:iti:xds:2013:order")
    return tuple(values)


_ESCAPES = str.maketrans({"\\": "\\E\\", "|": "\\F\\", "^": "\\S\\", "&": "\\T\\", "~": "\\R\\"})


def _hl7(text: str) -> str:
    """HL7 v2 escaping, so a name with `^` or `&` cannot shift the components after it."""
    return text.translate(_ESCAPES)
