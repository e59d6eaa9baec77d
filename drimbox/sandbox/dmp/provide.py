"""ITI-41 Provide and Register Document Set-b, checked in phases as a registry would, each phase
answering all its RegistryErrors at once: structure (`metadata.py`), content rules (`rules.py`),
patient (VIHF resource-id = patientId: XDSPatientIdDoesNotMatch; optionally a patient known to the
sandbox: XDSUnknownPatientId), the KOS bytes and the XAdES manifest, then the registry state
(XDSDuplicateUniqueIdInRegistry, XDSNonIdenticalHash for a known uniqueId with other bytes, RPLC
targets: registered, Approved — XDSRegistryDeprecatedDocumentError otherwise — and of the same
patient). Only then is everything written, in one transaction.
"""

from __future__ import annotations

import copy
import sqlite3
import uuid

from lxml import etree

from drimbox.sandbox.dmp.answers import Fault, refuse
from drimbox.sandbox.dmp.context import Context
from drimbox.sandbox.dmp.ebxml import APPROVED, DE_TYPE, LCM, RIM, XDSB, Element, is_uuid_urn, q
from drimbox.sandbox.dmp.metadata import (
    DocumentEntry,
    Problems,
    Submission,
    attach_documents,
    read_association,
    read_entry,
    read_registry_objects,
    read_submission_set,
)
from drimbox.sandbox.dmp.rules import KOS_TYPE, check_associations, check_kos, check_submission, patient_ins
from drimbox.sandbox.dmp.store import NewSubmissionSet, StoredEntry
from drimbox.sandbox.dmp.xades import check_xades

METADATA = "XDSRegistryMetadataError"
REFERENCE_IDS = "urn:ihe:iti:xds:2013:referenceIdList"


def provide(context: Context) -> None:
    """Register the submission, or raise Refusal / Fault."""
    submission = _read(context)
    rules = context.rules
    problems = Problems()
    check_submission(submission, rules.ins_oids, problems)
    signature, replaces = check_associations(submission, problems)
    problems.raise_any()
    submission_set = submission.submission_set
    if context.vihf.resource_id != submission_set.patient_id:
        raise refuse("XDSPatientIdDoesNotMatch", "resource-id du VIHF différent du patientId du lot", submission_set.id)
    ins = patient_ins(submission_set.patient_id, rules.ins_oids) or ""
    if rules.require_known_patients and context.store.patient(ins) is None:
        raise refuse("XDSUnknownPatientId", "patient inconnu du DMP", submission_set.id)
    for entry in submission.entries:
        if _type(entry) == KOS_TYPE:
            check_kos(entry, ins, problems)
    problems.raise_any()
    assert signature is not None and signature.document is not None  # check_associations made sure
    manifest = check_xades(signature.document, context.trust, rules.algorithms, context.vihf.structure_id, signature.id)
    if f"urn:oid:{submission_set.unique_id}" not in manifest.references:
        problems.add(METADATA, "le manifeste XAdES ne référence pas le lot de soumission", signature.id)
    for entry in submission.entries:
        if entry is not signature and not manifest.matches(entry.unique_id, entry.document or b""):
            problems.add(METADATA, "document absent du manifeste XAdES ou empreinte différente", entry.id)
    problems.raise_any()
    _check_registry(context, submission, replaces, problems)
    problems.raise_any()
    _register(context, submission, replaces)


def _read(context: Context) -> Submission:
    body = context.envelope.body
    children = list(body.iterchildren("{*}*"))
    if body.tag != q(XDSB, "ProvideAndRegisterDocumentSetRequest") or not children:
        raise Fault("", "xdsb:ProvideAndRegisterDocumentSetRequest attendu", detail="CORPS_INATTENDU")
    if children[0].tag != q(LCM, "SubmitObjectsRequest") or any(c.tag != q(XDSB, "Document") for c in children[1:]):
        raise Fault("", "lcm:SubmitObjectsRequest puis xdsb:Document attendus", detail="CORPS_INATTENDU")
    problems = Problems()
    packages, extrinsic, associations = read_registry_objects(children[0], problems)
    submission_set = read_submission_set(packages, children[0], problems)
    entries = [read_entry(element, problems) for element in extrinsic]
    attach_documents(body, entries, context.message.parts, problems)
    links = [read_association(element, problems) for element in associations]
    if not entries:
        problems.add(METADATA, "aucune fiche de document dans la soumission")
    problems.raise_any()
    assert submission_set is not None  # else a problem was raised
    return Submission(submission_set, entries, links)


def _check_registry(context: Context, submission: Submission, replaces: dict[str, str], problems: Problems) -> None:
    store, submission_set = context.store, submission.submission_set
    if store.submission_set_exists(unique_id=submission_set.unique_id):
        problems.add("XDSDuplicateUniqueIdInRegistry", "uniqueId du lot déjà enregistré", submission_set.id)
    for item in [submission_set, *submission.entries]:
        if is_uuid_urn(item.id) and store.uuid_taken(item.id):
            problems.add(METADATA, f"identifiant {item.id} déjà utilisé dans le registre", item.id)
    for entry in submission.entries:
        known = store.entry(unique_id=entry.unique_id)
        if known is not None:
            same = known.hash == entry.slot("hash").lower()
            code = "XDSDuplicateUniqueIdInRegistry" if same else "XDSNonIdenticalHash"
            problems.add(code, f"uniqueId {entry.unique_id} déjà enregistré", entry.id)
    for entry_id, target_uuid in replaces.items():
        target = store.entry(entry_uuid=target_uuid)
        if target is None:
            problems.add(METADATA, f"RPLC vers une fiche inconnue {target_uuid}", entry_id)
        elif target.status != APPROVED:
            problems.add(
                "XDSRegistryDeprecatedDocumentError", f"RPLC vers une fiche non Approved {target_uuid}", entry_id
            )
        elif target.patient_id != submission_set.patient_id:
            problems.add("XDSPatientIdDoesNotMatch", "RPLC vers une fiche d'un autre patient", entry_id)


def _register(context: Context, submission: Submission, replaces: dict[str, str]) -> None:
    ids = {item.id: item.id if is_uuid_urn(item.id) else f"urn:uuid:{uuid.uuid4()}"
           for item in [submission.submission_set, *submission.entries]}  # fmt: skip
    submission_set = submission.submission_set
    new_set = NewSubmissionSet(ids[submission_set.id], submission_set.unique_id, submission_set.patient_id,
                               submission_set.source_id, registry_form(submission_set.element, ids, None))  # fmt: skip
    entries = []
    for entry in submission.entries:
        document = entry.document or b""
        codes = tuple((scheme, code.code, code.scheme) for scheme, found in entry.codes.items() for code in found)
        entries.append(
            StoredEntry(
                entry_uuid=ids[entry.id],
                unique_id=entry.unique_id,
                patient_id=entry.patient_id,
                status=APPROVED,
                mime_type=entry.mime_type,
                hash=entry.slot("hash").lower(),
                size=len(document),
                creation_time=entry.slot("creationTime"),
                type_code=_type(entry),
                document=document,
                metadata=registry_form(entry.element, ids, context.rules.repository_uid),
                submission_set=submission_set.unique_id,
                repository_unique_id=context.rules.repository_uid,
                replaces=replaces.get(entry.id),
                codes=codes,
                reference_ids=tuple(entry.slots.get(REFERENCE_IDS, [])),
            )
        )
    try:
        context.store.register(new_set, entries, deprecate=replaces.values())
    except sqlite3.IntegrityError as exc:  # a concurrent submission won the race
        raise refuse("XDSDuplicateUniqueIdInRegistry", f"uniqueId déjà enregistré ({exc})") from None


def registry_form(element: Element, ids: dict[str, str], repository_uid: str | None) -> str:
    """The object as the registry returns it: urn:uuid ids everywhere, plus repositoryUniqueId."""
    registered = copy.deepcopy(element)
    own = ids[element.get("id", "")]
    registered.set("id", own)
    registered.set("lid", own)
    for child in registered.iterchildren(q(RIM, "Classification"), q(RIM, "ExternalIdentifier")):
        if not is_uuid_urn(child.get("id", "")):
            child.set("id", f"urn:uuid:{uuid.uuid4()}")
        link = "classifiedObject" if child.tag == q(RIM, "Classification") else "registryObject"
        child.set(link, own)
    if repository_uid is not None:
        slot = etree.Element(q(RIM, "Slot"), name="repositoryUniqueId")
        etree.SubElement(etree.SubElement(slot, q(RIM, "ValueList")), q(RIM, "Value")).text = repository_uid
        position = len(registered.findall(q(RIM, "Slot")))
        registered.insert(position, slot)
    return etree.tostring(registered, encoding="unicode")


def _type(entry: DocumentEntry) -> str:
    code = entry.code(DE_TYPE)
    return "" if code is None else code.code
