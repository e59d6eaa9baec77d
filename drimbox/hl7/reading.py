"""Bytes from the RIS → `ReportMessage`, or the ACK that says why not (DRIM-M §3.6, §4.1).

Read leniently, judge nothing: which INS is acceptable, which document types are published,
is the inbox's business. What is refused here is what cannot be read at all: another message
type or version (AR), a missing PID, document or order, broken base64 (AE), each with its
HL7 table 0357 code and an ERR-2 location such as `OBX^1^5`.

Accepted: ORU^R01 (CI-SIS v2.5; 2.3.1 to 2.6 read), MDM^T02/T10/T04 (v2.6), OMI^O23 (the
DRIM-M order flow, v2.5.1). Messages older than v2.5 (the PoC's v2.3.1 sample) may lack PID:
the identity then comes from the CDA alone, which the inbox checks.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import replace

from drimbox.hl7.er7 import DEFAULT_CHARSET, Header, Message, MessageUnreadable, Segment, parse, unreadable
from drimbox.report.message import (
    HL7_DATA_TYPE_ERROR,
    HL7_REQUIRED_FIELD_MISSING,
    HL7_SEGMENT_SEQUENCE_ERROR,
    HL7_TABLE_VALUE_NOT_FOUND,
    HL7_UNSUPPORTED_EVENT_CODE,
    HL7_UNSUPPORTED_MESSAGE_TYPE,
    HL7_UNSUPPORTED_VERSION,
    PatientIdentifier,
    ReportAction,
    ReportMessage,
)

__all__ = ["MessageUnreadable", "read_message"]

SUPPORTED_VERSIONS = ("2.3.1", "2.4", "2.5", "2.5.1", "2.6")
#: Versions before the CI-SIS profile, whose messages may come without PID.
LEGACY_VERSIONS = ("2.3.1", "2.4")
EVENTS = {("ORU", "R01"), ("MDM", "T02"), ("MDM", "T10"), ("MDM", "T04"), ("OMI", "O23")}
#: MSH-21 of the CI-SIS "transmission de document(s) CDA-R2 en HL7v2" profile (volet 2.1).
PROFILE = "CISIS_CDA_HL7_V2"
PROFILE_MAJOR = "2"
#: OBX-3.3 of the DMP/MSSanté metadata OBX (masking, visibility, destinations).
FLAG_SYSTEM = "METADMPMSS"

_MDM_ACTIONS = {"T02": ReportAction.PUBLISH, "T10": ReportAction.REPLACE, "T04": ReportAction.DELETE}
_ORDER_ACTIONS = {"NW": ReportAction.PUBLISH, "CA": ReportAction.DELETE}


def read_message(raw: bytes) -> ReportMessage:
    """Read one HL7 v2 message (the MLLP frame content); raise `MessageUnreadable` with the ACK otherwise."""
    message = parse(raw)
    header = Header.of(message.header)
    _check_header(header)
    patient_ids, reliability = _patient(message, header)
    common = ReportMessage(
        control_id=header.control_id,
        message_type=message.header.joined(9),
        event=header.event,
        version=header.version,
        action=ReportAction.PUBLISH,
        document=b"",
        document_type="",
        sending_application=header.sending_application,
        sending_facility=header.sending_facility,
        receiving_application=header.receiving_application,
        receiving_facility=header.receiving_facility,
        patient_ids=patient_ids,
        identity_reliability=reliability,
        flags=_flags(message),
        charset=header.charset or DEFAULT_CHARSET,
        raw=raw,
    )
    if header.message_code == "OMI":
        return _order(message, header, common)
    return _report(message, header, common)


def _check_header(header: Header) -> None:
    control_id = header.control_id
    if not header.control_id:
        raise unreadable("AR", "MSH-10 (message control id) is empty", HL7_REQUIRED_FIELD_MISSING, "MSH^1^10", "")
    kind = f"{header.message_code}^{header.event}".strip("^")[:40] or "(none)"
    if (header.message_code, header.event) not in EVENTS:
        if header.message_code in {code for code, _ in EVENTS}:
            raise unreadable("AR", f"unsupported event {kind}", HL7_UNSUPPORTED_EVENT_CODE, "MSH^1^9", control_id)
        raise unreadable("AR", f"unsupported message type {kind}: ORU^R01, MDM^T02/T10/T04 or OMI^O23 expected",
                         HL7_UNSUPPORTED_MESSAGE_TYPE, "MSH^1^9", control_id)  # fmt: skip
    if header.version not in SUPPORTED_VERSIONS:
        raise unreadable("AR", f"unsupported HL7 version {header.version or '(none)'}", HL7_UNSUPPORTED_VERSION,
                         "MSH^1^12", control_id)  # fmt: skip
    profiles = [(version, name) for version, name in header.profile if version or name]
    if header.message_code != "OMI" and profiles:
        ours = [version for version, name in profiles if name.upper() == PROFILE]
        if not ours or not any(v.split(".")[0] == PROFILE_MAJOR for v in ours):
            shown = ", ".join("^".join(p) for p in profiles)
            raise unreadable("AR", f"unsupported message profile {shown}: {PROFILE} {PROFILE_MAJOR}.x expected",
                             HL7_UNSUPPORTED_VERSION, "MSH^1^21", control_id)  # fmt: skip


def _patient(message: Message, header: Header) -> tuple[tuple[PatientIdentifier, ...], str]:
    """PID-3 repetitions (CX: value, CX-4.1 namespace, CX-4.2 OID, CX-5 type) and PID-32."""
    pid = message.first("PID")
    if pid is None:
        if header.message_code == "OMI" or header.version in LEGACY_VERSIONS:
            return (), ""
        raise unreadable("AE", "PID segment missing", HL7_SEGMENT_SEQUENCE_ERROR, "PID", header.control_id)
    ids = tuple(
        PatientIdentifier(
            value=pid.get(3, 1, repetition=r).strip(),
            namespace=pid.get(3, 4, 1, repetition=r).strip(),
            oid=pid.get(3, 4, 2, repetition=r).strip(),
            type_code=pid.get(3, 5, repetition=r).strip(),
        )
        for r in range(1, pid.repetitions(3) + 1)
    )
    ids = tuple(i for i in ids if i.value)
    if not ids and header.message_code != "OMI":
        raise unreadable("AE", "PID-3 (patient identifiers) is empty", HL7_REQUIRED_FIELD_MISSING, "PID^1^3",
                         header.control_id)  # fmt: skip
    return ids, pid.get(32).strip()


def _report(message: Message, header: Header, common: ReportMessage) -> ReportMessage:
    """ORU^R01 or MDM: the CDA in the first ED OBX, the action from the event, OBX-11 or ORC-1."""
    found = _document_obx(message)
    if found is None:
        raise unreadable("AE", "no OBX of type ED carries the document", HL7_REQUIRED_FIELD_MISSING, "OBX",
                         header.control_id)  # fmt: skip
    sequence, obx = found
    document = _document(obx, f"OBX^{sequence}^5", header.control_id)
    orc = message.first("ORC")
    order_control = orc.get(1).strip().upper() if orc else ""
    status = obx.get(11).strip().upper()
    txa = message.first("TXA")
    if header.message_code == "MDM":
        if txa is None:
            raise unreadable("AE", "TXA segment missing", HL7_SEGMENT_SEQUENCE_ERROR, "TXA", header.control_id)
        action = _MDM_ACTIONS[header.event]
    else:
        action = _oru_action(order_control, status, f"OBX^{sequence}^11", header.control_id)
    document_type = (txa.get(2).strip() if txa else "") or obx.get(3).strip()
    return replace(
        common,
        action=action,
        document=document,
        document_type=document_type,
        order_control=order_control,
        result_status=status,
        document_id=txa.get(12).strip() if txa else "",
        replaces_hint=txa.get(13).strip() if txa else "",
    )


def _oru_action(order_control: str, status: str, location: str, control_id: str) -> ReportAction:
    """OBX-11 F/C/D (volet §3.6); ORC-1 CA (deletion samples) and RO (replacement) also count."""
    if order_control == "CA" or status == "D":
        return ReportAction.DELETE
    if order_control == "RO" or status == "C":
        return ReportAction.REPLACE
    if status in ("F", ""):
        return ReportAction.PUBLISH
    raise unreadable("AE", f"OBX-11 result status {status} not supported: F, C or D expected",
                     HL7_TABLE_VALUE_NOT_FOUND, location, control_id)  # fmt: skip


def _order(message: Message, header: Header, common: ReportMessage) -> ReportMessage:
    """OMI^O23: ORC-1 NW (new order) or CA (cancellation); IPC-1 accession, IPC-3 study UID. No document."""
    orc = message.first("ORC")
    if orc is None:
        raise unreadable("AE", "ORC segment missing", HL7_SEGMENT_SEQUENCE_ERROR, "ORC", header.control_id)
    order_control = orc.get(1).strip().upper()
    if order_control not in _ORDER_ACTIONS:
        raise unreadable("AE", f"ORC-1 order control {order_control or '(none)'} not supported: NW or CA expected",
                         HL7_TABLE_VALUE_NOT_FOUND, "ORC^1^1", header.control_id)  # fmt: skip
    ipcs = message.all("IPC")
    if not ipcs:
        raise unreadable("AE", "IPC segment missing", HL7_SEGMENT_SEQUENCE_ERROR, "IPC", header.control_id)
    studies = tuple(dict.fromkeys(uid for ipc in ipcs if (uid := ipc.get(3).strip())))
    obr = message.first("OBR")
    return replace(
        common,
        action=_ORDER_ACTIONS[order_control],
        document=b"",
        document_type=obr.get(4).strip() if obr else "",
        order_control=order_control,
        study_uids=studies,
        accession_number=next((a for ipc in ipcs if (a := ipc.get(1).strip())), ""),
    )


def _document_obx(message: Message) -> tuple[int, Segment] | None:
    """The first OBX of value type ED that is not a MetaDMPMSS flag, with its sequence among OBX."""
    for sequence, obx in enumerate(message.all("OBX"), start=1):
        if obx.get(2).strip().upper() == "ED" and obx.get(3, 3).strip().upper() != FLAG_SYSTEM:
            return sequence, obx
    return None


def _document(obx: Segment, location: str, control_id: str) -> bytes:
    """OBX-5 as ED (`^TEXT^XML^Base64^<data>`, any case) or, in the PoC's v2.3.1 sample, bare base64."""
    if obx.fields[5:6] and len(obx.fields[5][0]) >= 4:
        encoding = obx.get(5, 4).strip().upper()
        data = obx.get(5, 5)
        if encoding != "BASE64":
            raise unreadable("AE", f"OBX-5 encoding {encoding or '(none)'} not supported: Base64 expected",
                             HL7_DATA_TYPE_ERROR, location, control_id)  # fmt: skip
    else:
        data = obx.get(5)
    compact = "".join(data.split())
    if not compact:
        raise unreadable("AE", "the document (OBX-5) is empty", HL7_REQUIRED_FIELD_MISSING, location, control_id)
    try:
        return _base64(compact)
    except (binascii.Error, ValueError) as exc:
        raise unreadable("AE", "the document (OBX-5) is not valid base64", HL7_DATA_TYPE_ERROR, location,
                         control_id) from exc  # fmt: skip


def _flags(message: Message) -> dict[str, str]:
    """Each MetaDMPMSS OBX: OBX-3.1 → OBX-5.1 (Y/N), or the decoded text of an ED one (CORPSMAIL_PS)."""
    flags: dict[str, str] = {}
    for obx in message.all("OBX"):
        if obx.get(3, 3).strip().upper() != FLAG_SYSTEM or not (code := obx.get(3).strip()):
            continue
        if obx.get(2).strip().upper() == "ED":
            flags[code] = _text(obx.get(5, 5), obx.get(5, 4))
        else:
            flags[code] = obx.get(5).strip()
    return flags


def _text(data: str, encoding: str) -> str:
    """A free-text ED value: base64 decoded as UTF-8 (a truncated last character forgiven), else as written."""
    if encoding.strip().upper() != "BASE64":
        return data
    compact = "".join(data.split())
    compact = compact[: len(compact) - 1] if len(compact) % 4 == 1 else compact
    try:
        return _base64(compact).decode("utf-8", errors="replace")
    except (binascii.Error, ValueError):
        return data


def _base64(data: str) -> bytes:
    """Strict alphabet, forgiving missing `=` padding: the CI-SIS T04 example omits it."""
    return base64.b64decode(data + "=" * (-len(data) % 4), validate=True)
