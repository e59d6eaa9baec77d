"""The DMP's content rules for an ITI-41 submission of a DRIM-M KOS (DRIM-M §4.4, §4.13).

Submission set: submissionTime, author, contentTypeCode, patientId, sourceId and uniqueId (OIDs).
Each entry: creationTime, languageCode, sourcePatientId, hash/size equal to the part's SHA-1 and
length (XDSNonIdenticalHash / XDSNonIdenticalSize), one classCode, typeCode, formatCode,
healthcareFacilityTypeCode (1.2.250.1.71.4.2.4) and practiceSettingCode (1.2.250.1.213.1.1.4.9),
confidentiality N (2.16.840.1.113883.5.25) plus optionally MASQUE_PS / INVISIBLE_PATIENT /
INVISIBLE_REPRESENTANTS_LEGAUX (1.2.250.1.213.1.1.4.13), the submission set's patientId
(XDSPatientIdDoesNotMatch), a uniqueId used once in the message
(XDSRegistryDuplicateUniqueIdInMessage). Accepted document kinds, by typeCode: the KOS (IMG-KOS,
read with pydicom: SOP class 88.59, SOPInstanceUID = uniqueId, PatientID = INS), the signature
(E1762) and the imaging report (18748-4); anything else is refused. Associations: HasMember
SubmissionSet→each entry (SubmissionSetStatus Original), one `signs` signature→SubmissionSet,
RPLC entry→registered entryUUID; any other type is XDSRegistryMetadataError.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from collections.abc import Collection
from io import BytesIO

from pydicom import dcmread
from pydicom.errors import InvalidDicomError

from drimbox.sandbox.dmp.ebxml import (
    DE_CLASS,
    DE_CONFIDENTIALITY,
    DE_FACILITY,
    DE_FORMAT,
    DE_PRACTICE,
    DE_TYPE,
    HAS_MEMBER,
    RPLC,
    SIGNS,
    SS_CONTENT_TYPE,
    STABLE_ENTRY,
    dtm,
    is_uuid_urn,
)
from drimbox.sandbox.dmp.metadata import Association, DocumentEntry, Problems, RegistryObject, Submission, SubmissionSet
from drimbox.uids import is_valid_uid

METADATA = "XDSRegistryMetadataError"
REPOSITORY = "XDSRepositoryMetadataError"
KOS_CLASS = "1.2.840.10008.5.1.4.1.1.88.59"
SIGNATURE_TYPE = "E1762"
KOS_TYPE = "IMG-KOS"
REPORT_TYPE = "18748-4"
# typeCode → (typeCode scheme, classCode, classCode scheme, formatCode or '' for any, format scheme, mimeType)
KINDS = {
    KOS_TYPE: (
        "1.2.250.1.213.1.1.4.12",
        "31",
        "1.2.250.1.213.1.1.4.1",
        KOS_CLASS,
        "1.2.840.10008.2.6.1",
        "application/dicom",
    ),
    SIGNATURE_TYPE: (
        "ASTM",
        "urn:oid:1.3.6.1.4.1.19376.1.2.1.1.1",
        "URN",
        "http://www.w3.org/2000/09/xmldsig#",
        "URN",
        "text/xml",
    ),
    REPORT_TYPE: ("2.16.840.1.113883.6.1", "10", "1.2.250.1.213.1.1.4.1", "", "", "text/xml"),
}
#: TRE_A07 StatutVisibiliteDocument: the HL7 flag INVISIBLE_REP_LEGAUX is the code
#: INVISIBLE_REPRESENTANTS_LEGAUX in XDS metadata (CI-SIS volet, correction of the earlier spelling).
CONFIDENTIALITY = {
    ("N", "2.16.840.1.113883.5.25"),
    ("MASQUE_PS", "1.2.250.1.213.1.1.4.13"),
    ("INVISIBLE_PATIENT", "1.2.250.1.213.1.1.4.13"),
    ("INVISIBLE_REPRESENTANTS_LEGAUX", "1.2.250.1.213.1.1.4.13"),
}
_PATIENT = re.compile(r"(?P<ins>\d{5}(?:\d{2}|2[AB])\d{8})\^\^\^&(?P<oid>\d+(?:\.\d+)+)&ISO\^NH")


def patient_ins(patient_id: str, ins_oids: Collection[str]) -> str | None:
    """The INS of `<INS>^^^&<OID>&ISO^NH` when the OID is an accepted INS OID, else None."""
    match = _PATIENT.fullmatch(patient_id)
    return match.group("ins") if match and match.group("oid") in ins_oids else None


def check_submission(submission: Submission, ins_oids: Collection[str], problems: Problems) -> None:
    submission_set = submission.submission_set
    check_submission_set(submission_set, ins_oids, problems)
    for entry in submission.entries:
        _check_entry(entry, submission_set.patient_id, problems)
    counts = Counter([submission_set.unique_id] + [entry.unique_id for entry in submission.entries])
    for unique_id, count in counts.items():
        if unique_id and count > 1:
            problems.add("XDSRegistryDuplicateUniqueIdInMessage", f"uniqueId {unique_id} répété dans le message")


def check_submission_set(submission_set: SubmissionSet, ins_oids: Collection[str], problems: Problems) -> None:
    where = submission_set.id
    if not dtm(submission_set.slot("submissionTime")):
        problems.add(METADATA, "submissionTime absent ou mal formé", where)
    _check_authors(submission_set, problems)
    if submission_set.code(SS_CONTENT_TYPE) is None:
        problems.add(METADATA, "contentTypeCode unique attendu", where)
    if patient_ins(submission_set.patient_id, ins_oids) is None:
        problems.add(METADATA, "patientId du lot : INS^^^&OID&ISO^NH attendu, OID d'INS accepté", where)
    for name, value in (("sourceId", submission_set.source_id), ("uniqueId", submission_set.unique_id)):
        if not is_valid_uid(value):
            problems.add(METADATA, f"{name} du lot absent ou qui n'est pas un OID", where)


def check_kos(entry: DocumentEntry, ins: str, problems: Problems) -> None:
    """The KOS part must be the DICOM Part-10 object the metadata describes."""
    try:
        dataset = dcmread(BytesIO(entry.document or b""))
        found = (str(dataset.SOPClassUID), str(dataset.SOPInstanceUID), str(dataset.PatientID))
    except (InvalidDicomError, AttributeError, EOFError, KeyError, OSError, TypeError, ValueError) as exc:
        problems.add(REPOSITORY, f"le KOS n'est pas un objet DICOM lisible : {exc}", entry.id)
        return
    if found != (KOS_CLASS, entry.unique_id, ins):
        problems.add(
            REPOSITORY, "KOS : SOPClassUID, SOPInstanceUID (= uniqueId) ou PatientID (= INS) incohérent", entry.id
        )


def check_associations(submission: Submission, problems: Problems) -> tuple[DocumentEntry | None, dict[str, str]]:
    """(the signature entry, {entry id: entryUUID it replaces})."""
    set_id = submission.submission_set.id
    entries = {entry.id: entry for entry in submission.entries}
    members: Counter[str] = Counter()
    signs: list[Association] = []
    replaces: dict[str, str] = {}
    for association in submission.associations:
        where = association.id
        if association.type == HAS_MEMBER:
            if association.source != set_id or association.target not in entries:
                problems.add(METADATA, "HasMember doit relier le lot à une fiche de la soumission", where)
            elif association.slots.get("SubmissionSetStatus") != ["Original"]:
                problems.add(METADATA, "HasMember : SubmissionSetStatus Original attendu", where)
            members[association.target] += 1
        elif association.type == SIGNS:
            signs.append(association)
        elif association.type == RPLC:
            if (
                association.source not in entries
                or association.source in replaces
                or not is_uuid_urn(association.target)
            ):
                problems.add(
                    METADATA, "RPLC : fiche de la soumission → entryUUID (urn:uuid) d'une fiche enregistrée", where
                )
            else:
                replaces[association.source] = association.target
        else:
            problems.add(METADATA, f"type d'association non accepté : {association.type or '(absent)'}", where)
    for entry_id in entries:
        if members[entry_id] != 1:
            problems.add(METADATA, "chaque fiche doit être membre du lot par une et une seule HasMember", entry_id)
    signature = _signature(signs, entries, set_id, problems)
    if signature is not None and signature.id in replaces:
        problems.add(METADATA, "la signature ne remplace pas de fiche", signature.id)
    return signature, replaces


def _signature(
    signs: list[Association], entries: dict[str, DocumentEntry], set_id: str, problems: Problems
) -> DocumentEntry | None:
    signatures = [entry for entry in entries.values() if _type(entry) == SIGNATURE_TYPE]
    if len(signs) != 1 or len(signatures) != 1:
        problems.add(METADATA, "une signature du lot (typeCode E1762) et une association signs sont obligatoires")
        return None
    if signs[0].source != signatures[0].id or signs[0].target != set_id:
        problems.add(METADATA, "signs doit relier le document de signature au lot de soumission", signs[0].id)
        return None
    return signatures[0]


def _check_entry(entry: DocumentEntry, set_patient: str, problems: Problems) -> None:
    where = entry.id
    if entry.object_type != STABLE_ENTRY:
        problems.add(METADATA, "objectType de fiche stable (7edca82f-…) attendu", where)
    for slot in ("creationTime", "languageCode", "sourcePatientId", "hash", "size"):
        if not entry.slot(slot):
            problems.add(METADATA, f"slot {slot} absent ou à plusieurs valeurs", where)
    if entry.slot("creationTime") and not dtm(entry.slot("creationTime")):
        problems.add(METADATA, "creationTime mal formé", where)
    _check_authors(entry, problems)
    for scheme, name in ((DE_CLASS, "classCode"), (DE_TYPE, "typeCode"), (DE_FORMAT, "formatCode")):
        if entry.code(scheme) is None:
            problems.add(METADATA, f"{name} unique attendu", where)
    for scheme, name, system in ((DE_FACILITY, "healthcareFacilityTypeCode", "1.2.250.1.71.4.2.4"),
                                 (DE_PRACTICE, "practiceSettingCode", "1.2.250.1.213.1.1.4.9")):  # fmt: skip
        code = entry.code(scheme)
        if code is None or code.scheme != system:
            problems.add(METADATA, f"{name} unique attendu, codingScheme {system}", where)
    confidentiality = [(code.code, code.scheme) for code in entry.codes.get(DE_CONFIDENTIALITY, [])]
    if confidentiality.count(("N", "2.16.840.1.113883.5.25")) != 1 or not set(confidentiality) <= CONFIDENTIALITY:
        problems.add(METADATA, "confidentialityCode : N une fois, plus MASQUE_PS/INVISIBLE_* seulement", where)
    if entry.patient_id != set_patient:
        problems.add("XDSPatientIdDoesNotMatch", "patientId de la fiche différent de celui du lot", where)
    if not document_unique_id(entry.unique_id):
        problems.add(METADATA, "uniqueId de la fiche absent ou qui n'est ni un OID ni OID^extension", where)
    _check_kind(entry, problems)
    _check_bytes(entry, problems)


def _check_kind(entry: DocumentEntry, problems: Problems) -> None:
    kind = KINDS.get(_type(entry))
    if kind is None:
        problems.add(METADATA, f"typeCode {_type(entry)!r} non accepté (IMG-KOS, E1762, 18748-4)", entry.id)
        return
    type_scheme, class_code, class_scheme, format_code, format_scheme, mime_type = kind
    type_code, class_ = entry.code(DE_TYPE), entry.code(DE_CLASS)
    format_ = entry.code(DE_FORMAT)
    if type_code is None or type_code.scheme != type_scheme:
        problems.add(METADATA, f"typeCode {_type(entry)} : codingScheme {type_scheme} attendu", entry.id)
    if class_ is None or (class_.code, class_.scheme) != (class_code, class_scheme):
        problems.add(METADATA, f"classCode {class_code} ({class_scheme}) attendu", entry.id)
    if format_code and (format_ is None or (format_.code, format_.scheme) != (format_code, format_scheme)):
        problems.add(METADATA, f"formatCode {format_code} ({format_scheme}) attendu", entry.id)
    if entry.mime_type != mime_type:
        problems.add(REPOSITORY, f"mimeType {mime_type} attendu", entry.id)


def _check_bytes(entry: DocumentEntry, problems: Problems) -> None:
    if entry.document is None:
        return
    declared_hash, declared_size = entry.slot("hash").lower(), entry.slot("size")
    if declared_hash and declared_hash != hashlib.sha1(entry.document).hexdigest():
        problems.add("XDSNonIdenticalHash", "hash différent du SHA-1 du document reçu", entry.id)
    if declared_size and declared_size != str(len(entry.document)):
        problems.add("XDSNonIdenticalSize", "size différent de la taille du document reçu", entry.id)


def _check_authors(target: RegistryObject, problems: Problems) -> None:
    if not any(author.get("authorPerson") or author.get("authorInstitution") for author in target.authors):
        problems.add(METADATA, "auteur (authorPerson ou authorInstitution) absent", target.id)


def _type(entry: DocumentEntry) -> str:
    code = entry.code(DE_TYPE)
    return "" if code is None else code.code


_EXTENSION = re.compile(r"[A-Za-z0-9._-]{1,16}")
_LONG_OID = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))+")


def document_unique_id(value: str) -> bool:
    """IHE ITI TF-3 §4.2.3.2.26: a document uniqueId is an OID, or `OID^extension` (extension ≤ 16
    characters, 128 in all) — the form a CDA id with root and extension takes."""
    root, caret, extension = value.partition("^")
    if not caret:
        return is_valid_uid(value)
    return len(value) <= 128 and bool(_LONG_OID.fullmatch(root)) and bool(_EXTENSION.fullmatch(extension))
