"""Audit trail records as DICOM PS3.15 Annex A.5 audit messages (the IHE ATNA format).

A site's audit repository (an ATNA collector, a SIEM) reads these messages, not our database, so
each record becomes the A.5.3 message that names the same event: a WADO-RS retrieval is "DICOM
Instances Transferred", a refused TLS peer a "Security Alert", a DMP publication an "Export". The
mapping is one table (`_KINDS`, `_PREFIXES`); an action it does not know still exports, as a
generic "Application Activity" carrying our action name, so a new event is never dropped. Every
message also carries our own action as an EventTypeCode in the `DRIMBOX` code system, so the
repository can tell apart events that share a DICOM EventID.

lxml builds the XML: values are escaped by the serializer, never concatenated, and characters XML
cannot carry (controls) are removed first. `docs/audit.md` lists the mapping.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import re
from dataclasses import dataclass
from datetime import UTC

from lxml import etree

from drimbox.audit.trail import StoredRecord


@dataclass(frozen=True)
class Code:
    """A coded value (PS3.15 CodedValueType): code, coding scheme, meaning."""

    code: str
    system: str
    meaning: str


def _dcm(code: str, meaning: str) -> Code:
    return Code(code, "DCM", meaning)


# EventID (PS3.16 CID 400)
APPLICATION_ACTIVITY = _dcm("110100", "Application Activity")
AUDIT_LOG_USED = _dcm("110101", "Audit Log Used")
INSTANCES_ACCESSED = _dcm("110103", "DICOM Instances Accessed")
INSTANCES_TRANSFERRED = _dcm("110104", "DICOM Instances Transferred")
EXPORT = _dcm("110106", "Export")
IMPORT = _dcm("110107", "Import")
QUERY = _dcm("110112", "Query")
SECURITY_ALERT = _dcm("110113", "Security Alert")
USER_AUTHENTICATION = _dcm("110114", "User Authentication")
# EventTypeCode (CID 401, CID 403)
APPLICATION_START = _dcm("110120", "Application Start")
APPLICATION_STOP = _dcm("110121", "Application Stop")
LOGIN = _dcm("110122", "Login")
NODE_AUTHENTICATION = _dcm("110126", "Node Authentication")
SECURITY_CONFIGURATION = _dcm("110129", "Security Configuration")
SOFTWARE_CONFIGURATION = _dcm("110131", "Software Configuration")
USE_OF_RESTRICTED_FUNCTION = _dcm("110132", "Use of Restricted Function")
# RoleIDCode (CID 402)
APPLICATION = _dcm("110150", "Application")
DESTINATION = _dcm("110152", "Destination Role ID")
SOURCE = _dcm("110153", "Source Role ID")
# ParticipantObjectIDTypeCode (CID 404)
PATIENT_NUMBER = Code("2", "RFC-3881", "Patient Number")
STUDY_INSTANCE_UID = _dcm("110180", "Study Instance UID")
SOP_CLASS_UID = _dcm("110181", "SOP Class UID")
NODE_ID = _dcm("110182", "Node ID")

OUR_CODE_SYSTEM = "DRIMBOX"
STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1"  # the SOP Class a QIDO-RS or C-FIND study query stands for
SUCCESS, MINOR_FAILURE, SERIOUS_FAILURE = "0", "4", "8"
_OURSELVES = frozenset({"", "system", "drimbox"})  # actors that mean "this box on its own"


@dataclass(frozen=True)
class EventKind:
    """How one of our actions reads in PS3.15: the EventID, the action code (C/R/U/D/E), the
    event type, the roles of this box and of the other side, and whether a failure is a refused
    request (outcome 4: the caller may try again, properly) rather than a broken action (8)."""

    event_id: Code
    action_code: str
    event_type: Code | None = None
    we_are: Code | None = None
    they_are: Code | None = None
    refusal: bool = False
    query: bool = False  # carries a Query participant object (PS3.15 A.5.3.10)
    node_subject: bool = False  # the peer is the alert's subject (a node we refused)


_SENT = EventKind(INSTANCES_TRANSFERRED, "R", we_are=SOURCE, they_are=DESTINATION)
_RECEIVED = EventKind(INSTANCES_TRANSFERRED, "C", we_are=DESTINATION, they_are=SOURCE)
_EXPORTED = EventKind(EXPORT, "R", we_are=SOURCE)
_KINDS: dict[str, EventKind] = {
    "dicomweb.retrieve": _SENT,
    "dicomweb.pixels": _SENT,
    "dicomweb.metadata": EventKind(INSTANCES_ACCESSED, "R"),
    "dicomweb.search": EventKind(QUERY, "E", we_are=DESTINATION, they_are=SOURCE, query=True),
    "dicomweb.access": EventKind(INSTANCES_ACCESSED, "R", refusal=True),
    "tls.refused": EventKind(SECURITY_ALERT, "E", NODE_AUTHENTICATION, refusal=True, node_subject=True),
    "association.refused": EventKind(SECURITY_ALERT, "E", NODE_AUTHENTICATION, refusal=True, node_subject=True),
    "auth.refused": EventKind(USER_AUTHENTICATION, "E", LOGIN, refusal=True),
    "hl7.received": EventKind(IMPORT, "C", we_are=DESTINATION, they_are=SOURCE),
    "report.received": EventKind(IMPORT, "C", we_are=DESTINATION, they_are=SOURCE),
    "instance.stored": _RECEIVED,
    "study.retrieved": _RECEIVED,
    "pacs.indexed": EventKind(QUERY, "E", we_are=SOURCE, they_are=DESTINATION, query=True),
    "whitelist.refresh": EventKind(SECURITY_ALERT, "E", SECURITY_CONFIGURATION),
    "config.changed": EventKind(SECURITY_ALERT, "E", SOFTWARE_CONFIGURATION),
    "daemon.started": EventKind(APPLICATION_ACTIVITY, "E", APPLICATION_START, we_are=APPLICATION),
    "daemon.stopped": EventKind(APPLICATION_ACTIVITY, "E", APPLICATION_STOP, we_are=APPLICATION),
    "publication.withdrawn": EventKind(EXPORT, "D", we_are=SOURCE),
    "kos.delete": EventKind(EXPORT, "D", we_are=SOURCE),
}
_PREFIXES: tuple[tuple[str, EventKind], ...] = (
    ("publication.", _EXPORTED),
    ("kos.", _EXPORTED),
    ("iocm.", EventKind(INSTANCES_ACCESSED, "D")),
    ("admin.audit", EventKind(AUDIT_LOG_USED, "R")),
    ("admin.", EventKind(SECURITY_ALERT, "E", USE_OF_RESTRICTED_FUNCTION)),
)
GENERIC = EventKind(APPLICATION_ACTIVITY, "E")


def event_kind(record: StoredRecord) -> EventKind:
    """The PS3.15 reading of `record.action`; `dicomweb.completed` reads as the request it closes."""
    action = record.action
    if action == "dicomweb.completed" and isinstance(record.detail.get("of"), str):
        action = str(record.detail["of"])
    if action in _KINDS:
        return _KINDS[action]
    return next((kind for prefix, kind in _PREFIXES if action.startswith(prefix)), GENERIC)


def outcome_indicator(record: StoredRecord, kind: EventKind | None = None) -> str:
    """0 for a success; a refused request is a minor failure (4), any other failure serious (8)."""
    if record.outcome == "success":
        return SUCCESS
    return MINOR_FAILURE if (kind or event_kind(record)).refusal else SERIOUS_FAILURE


def audit_message(record: StoredRecord, source_id: str, host: str) -> bytes:
    """The PS3.15 A.5 AuditMessage for `record`, reported by this box (`source_id`, on `host`), as
    UTF-8 XML with its declaration."""
    kind = event_kind(record)
    root = etree.Element("AuditMessage")
    _event(root, record, kind)
    _participants(root, record, kind, source_id, host)
    source = etree.SubElement(root, "AuditSourceIdentification", AuditSourceID=_clean(source_id) or "-")
    _code(source, "AuditSourceTypeCode", Code("4", "DCM", "Application Server Process or Thread"))
    _objects(root, record, kind)
    return bytes(etree.tostring(root, xml_declaration=True, encoding="UTF-8"))


def _event(root: etree._Element, record: StoredRecord, kind: EventKind) -> None:
    outcome = outcome_indicator(record, kind)
    moment = record.recorded_at.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")
    event = etree.SubElement(root, "EventIdentification", EventActionCode=kind.action_code, EventDateTime=moment,
                             EventOutcomeIndicator=outcome)  # fmt: skip
    _code(event, "EventID", kind.event_id)
    if kind.event_type is not None:
        _code(event, "EventTypeCode", kind.event_type)
    action = _clean(record.action) or "unknown"
    _code(event, "EventTypeCode", Code(action, OUR_CODE_SYSTEM, action))
    if outcome != SUCCESS:
        reason = next((record.detail[key] for key in ("reason", "text", "detail") if record.detail.get(key)), "")
        etree.SubElement(event, "EventOutcomeDescription").text = _clean(str(reason or record.outcome))


def _participants(root: etree._Element, record: StoredRecord, kind: EventKind, source_id: str, host: str) -> None:
    """The other side (the actor, and the remote box when its certificate names it), then us.
    The actor is the requestor; when the actor is this box itself, we are."""
    ours = record.actor.strip().lower() in _OURSELVES
    peer_is_node = "=" in record.peer  # a certificate DN, not an address
    if not ours:
        actor = _participant(root, record.actor, requestor=True, role=None if peer_is_node else kind.they_are)
        if record.peer and not peer_is_node:
            _access_point(actor, record.peer)
    if peer_is_node:
        _participant(root, record.peer, requestor=ours, role=kind.they_are)
    us = _participant(root, source_id or host, requestor=ours and not peer_is_node, role=kind.we_are)
    _access_point(us, host)


def _participant(root: etree._Element, user_id: str, *, requestor: bool, role: Code | None) -> etree._Element:
    element = etree.SubElement(root, "ActiveParticipant", UserID=_clean(user_id) or "-",
                               UserIsRequestor="true" if requestor else "false")  # fmt: skip
    if role is not None:
        _code(element, "RoleIDCode", role)
    return element


def _access_point(participant: etree._Element, address: str) -> None:
    """NetworkAccessPointID: the host part of `host` or `host:port`; type 2 for an IP, 1 for a name."""
    host = _clean(address).strip()
    if host.startswith("[") and "]" in host:
        host = host[1 : host.index("]")]
    elif host.count(":") == 1:
        host = host.split(":", 1)[0]
    if not host:
        return
    try:
        ipaddress.ip_address(host)
        type_code = "2"
    except ValueError:
        type_code = "1"
    participant.set("NetworkAccessPointID", host)
    participant.set("NetworkAccessPointTypeCode", type_code)


def _objects(root: etree._Element, record: StoredRecord, kind: EventKind) -> None:
    """Query, study, refused node, patient; the record's details ride on the first of them."""
    objects: list[etree._Element] = []
    if kind.query:
        query = record.detail.get("query")
        text = query if isinstance(query, str) else record.detail_text
        objects.append(_object(root, STUDY_ROOT_FIND, SOP_CLASS_UID, "2", "24", query=text))
    study = None
    if record.study_uid:
        study = _object(root, record.study_uid, STUDY_INSTANCE_UID, "2", "3", name=record.study_uid)
        objects.append(study)
    subject = record.peer or str(record.detail.get("address", ""))
    if kind.node_subject and subject:
        objects.append(_object(root, subject, NODE_ID, "2", "13", name=subject))
    if record.patient_id:
        objects.append(_object(root, record.patient_id, PATIENT_NUMBER, "1", "1", name=record.patient_id))
    if objects:
        _details(objects[0], record)
    if study is not None and isinstance(record.detail.get("sop_uid"), str):
        _instance(study, str(record.detail["sop_uid"]))


def _object(root: etree._Element, object_id: str, id_type: Code, type_code: str, role: str, *, name: str = "",
            query: str = "") -> etree._Element:  # fmt: skip
    """One ParticipantObjectIdentification; PS3.15 requires a name or a query in it."""
    element = etree.SubElement(root, "ParticipantObjectIdentification", ParticipantObjectID=_clean(object_id),
                               ParticipantObjectTypeCode=type_code, ParticipantObjectTypeCodeRole=role)  # fmt: skip
    _code(element, "ParticipantObjectIDTypeCode", id_type)
    if query:
        etree.SubElement(element, "ParticipantObjectQuery").text = _base64(query)
    else:
        etree.SubElement(element, "ParticipantObjectName").text = _clean(name) or "-"
    return element


def _details(element: etree._Element, record: StoredRecord) -> None:
    """Each detail as a ParticipantObjectDetail, base64 as PS3.15 wants: values are kept exactly."""
    for key, value in record.detail.items():
        text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
        etree.SubElement(element, "ParticipantObjectDetail", type=_clean(key) or "-", value=_base64(text))


def _instance(study: etree._Element, sop_uid: str) -> None:
    description = etree.SubElement(study, "ParticipantObjectDescription")
    sop_class = etree.SubElement(description, "SOPClass", NumberOfInstances="1")
    etree.SubElement(sop_class, "Instance", UID=_clean(sop_uid))


def _code(parent: etree._Element, tag: str, code: Code) -> None:
    etree.SubElement(parent, tag, {"csd-code": code.code, "codeSystemName": code.system, "originalText": code.meaning})


_NOT_XML = re.compile("[^\u0009\u000a\u000d\u0020-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def _clean(text: str) -> str:
    """`text` without the characters XML 1.0 cannot carry (lxml refuses them rather than escape)."""
    return _NOT_XML.sub("", text)


def _base64(text: str) -> str:
    return base64.b64encode(text.encode("utf-8", "surrogatepass")).decode("ascii")
