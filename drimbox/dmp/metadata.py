"""XDS.b requests as the DMP accepts them for a DRIM-M KOS (DRIM-M §4.4, §4.8): ITI-41, ITI-57, ITI-18.

The shape follows the DMP-accepted sample (`publication.xml`) element for element; the values come
from the report, the manifest and the settings. Entry ids are fresh `urn:uuid:` UUIDs per request:
XDS also allows symbolic ids ("DocumentKOS"), but UUIDs cannot collide between two submissions the
registry sees, and the registry keeps them as the entryUUIDs we later replace or withdraw.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping

from lxml import etree

from drimbox.config import DmpSettings, SiteSettings
from drimbox.dmp import codes
from drimbox.dmp.ebrim import XOP, element, external_identifier, localized, new_id, slot, sub, xds_time
from drimbox.dmp.entries import (
    Document,
    Parties,
    document_entry,
    invalid,
    kos_kind,
    parties,
    report_kind,
    signature_kind,
)
from drimbox.publish.submission import Submission, Withdrawal
from drimbox.report.model import Report
from drimbox.uids import is_valid_uid


def report_unique_id(report: Report) -> str:
    """The CDA's uniqueId as XDS writes an II: `root^extension`, or the root alone."""
    document_id = report.document_id
    return f"{document_id.root}^{document_id.extension}" if document_id.extension else document_id.root


def submit_objects_request(
    submission: Submission,
    settings: DmpSettings,
    site: SiteSettings,
    *,
    kos: Document,
    signature: Document,
    report: Document | None = None,
) -> etree._Element:
    """The lcm:SubmitObjectsRequest of an ITI-41: SubmissionSet, entries, associations.

    Refuses (DmpRefused, code `drimbox:InvalidMetadata`) what the DMP would refuse anyway: no INS,
    no author identifier, non-OID uniqueIds, a KOS for another patient than the report's.
    """
    for value, what in ((kos.unique_id, "manifest.sop_instance_uid"), (signature.unique_id, "signature_uid")):
        _check_uid(value, what)
    who = parties(submission.report, settings, site)
    request = element("lcm:SubmitObjectsRequest")
    objects = sub(request, "rim:RegistryObjectList")
    set_id = new_id()
    _submission_set(objects, set_id, submission.submission_uid, submission.report, who, site, settings, submission)
    document_entry(objects, kos, kos_kind(submission, who), who, submission, settings)
    if report is not None:
        document_entry(objects, report, report_kind(submission, who), who, submission, settings)
    document_entry(objects, signature, signature_kind(submission, who), who, submission, settings)
    original = {"SubmissionSetStatus": "Original"}
    for document in (kos, report, signature):
        if document is not None:
            _association(objects, codes.HAS_MEMBER, set_id, document.entry_id, original)
    _association(objects, codes.SIGNS, signature.entry_id, set_id, original)
    if submission.replaces:
        _association(objects, codes.REPLACES, kos.entry_id, submission.replaces, {})
    return request


def provide_and_register_request(submit: etree._Element, content_ids: Mapping[str, str]) -> etree._Element:
    """Wrap the metadata with one xdsb:Document per entry id, each an xop:Include of its MTOM part."""
    request = element("xdsb:ProvideAndRegisterDocumentSetRequest")
    request.append(submit)
    for entry_id, content_id in content_ids.items():
        document = sub(request, "xdsb:Document", id=entry_id)
        etree.SubElement(document, f"{{{XOP}}}Include", href=f"cid:{content_id}", nsmap={"xop": XOP})
    return request


def update_availability_request(withdrawal: Withdrawal, settings: DmpSettings, site: SiteSettings) -> etree._Element:
    """ITI-57: a SubmissionSet and one UpdateAvailabilityStatus association, Approved → Deleted."""
    if not withdrawal.entry_uuid:
        raise invalid("no entryUUID to withdraw", "entry_uuid")
    who = parties(withdrawal.report, settings, site)
    request = element("lcm:SubmitObjectsRequest")
    objects = sub(request, "rim:RegistryObjectList")
    set_id = new_id()
    _submission_set(objects, set_id, withdrawal.submission_uid, withdrawal.report, who, site, settings, withdrawal)
    statuses = {"OriginalStatus": codes.STATUS_APPROVED, "NewStatus": codes.STATUS_DELETED}
    _association(objects, codes.UPDATE_AVAILABILITY_STATUS, set_id, withdrawal.entry_uuid, statuses)
    return request


def get_documents_query(unique_id: str) -> etree._Element:
    """ITI-18 GetDocuments by uniqueId, whatever the entry's status (the query takes none).

    `LeafClass` rather than the PoC's ObjectRef, so the status and repositoryUniqueId come back.
    """
    request = element("query:AdhocQueryRequest")
    sub(request, "query:ResponseOption", returnComposedObjects="true", returnType="LeafClass")
    query = sub(request, "rim:AdhocQuery", id=codes.GET_DOCUMENTS_QUERY)
    quoted = unique_id.replace("'", "''")
    slot(query, "$XDSDocumentEntryUniqueId", f"('{quoted}')")
    return request


def default_source_id(site: SiteSettings) -> str:
    """A `2.25` OID (ITU-T X.667) derived from the structure id: stable for the site, unique worldwide,
    for a box whose operator has not registered its own sourceId OID yet."""
    return f"2.25.{uuid.uuid5(uuid.NAMESPACE_OID, f'drimbox:{site.structure_id}').int}"


def _submission_set(
    objects: etree._Element,
    set_id: str,
    unique_id: str,
    report: Report,
    who: Parties,
    site: SiteSettings,
    settings: DmpSettings,
    what: Submission | Withdrawal,
) -> None:
    """The RegistryPackage; sourceId is `dmp.source_id`, else `dmp.uid_root`, else `default_source_id`."""
    _check_uid(unique_id, "submission_uid")
    package = sub(objects, "rim:RegistryPackage", id=set_id)
    slot(package, "submissionTime", xds_time(what.submitted_at))
    localized(package, "rim:Name", report.title or codes.REPORT_TYPE.display)
    description = "Suppression" if isinstance(what, Withdrawal) else what.manifest.study_description or "KOS"
    localized(package, "rim:Description", description)
    author = sub(
        package,
        "rim:Classification",
        classificationScheme=codes.SUBMISSION_SET_AUTHOR,
        classifiedObject=set_id,
        id=new_id(),
    )
    slot(author, "authorPerson", who.author)
    slot(author, "authorInstitution", who.institution)
    content = sub(
        package,
        "rim:Classification",
        classificationScheme=codes.SUBMISSION_SET_CONTENT_TYPE,
        classifiedObject=set_id,
        id=new_id(),
        nodeRepresentation=settings.content_type_code,
    )
    slot(content, "codingScheme", settings.content_type_system)
    localized(content, "rim:Name", settings.content_type_display)
    sub(
        package,
        "rim:Classification",
        classificationNode=codes.SUBMISSION_SET_NODE,
        classifiedObject=set_id,
        id=new_id(),
    )
    source_id = settings.source_id or settings.uid_root or default_source_id(site)
    external_identifier(package, codes.SUBMISSION_SET_PATIENT_ID, set_id, who.patient_id, "XDSSubmissionSet.patientId")
    external_identifier(package, codes.SUBMISSION_SET_SOURCE_ID, set_id, source_id, "XDSSubmissionSet.sourceId")
    external_identifier(package, codes.SUBMISSION_SET_UNIQUE_ID, set_id, unique_id, "XDSSubmissionSet.uniqueId")


def _association(objects: etree._Element, kind: str, source: str, target: str, slots: Mapping[str, str]) -> None:
    association = sub(
        objects, "rim:Association", associationType=kind, id=new_id(), sourceObject=source, targetObject=target
    )
    for name, value in slots.items():
        slot(association, name, value)


def _check_uid(value: str, what: str) -> None:
    if not is_valid_uid(value):
        raise invalid(f"{what} {value!r} is not an OID", what)
