"""What the box answers the RIS: the technical ACK, and the ZAM^Z01 DMP receipt (CI-SIS volet 2.1).

The ACK follows the volet's example (`ack.er7`): our application in MSH-3/4, theirs in MSH-5/6,
`ACK^<event>^ACK`, the version, country and character set of the message acknowledged, MSA-2 =
its MSH-10. AE and AR add an ERR segment in the v2.5 layout (ERR-2 location, ERR-3 table 0357
code, ERR-4 severity, ERR-8 text); for older versions ERR-1 repeats it in the v2.3 layout.

Both builders work from what can be salvaged of MSH when the message itself was unreadable, and
write in the message's own character set (what we cannot encode there becomes `?`).
"""

from __future__ import annotations

import uuid
from datetime import datetime

from drimbox.hl7.er7 import CHARSETS, DEFAULT_CHARSET, Header, codec_for, escape, salvage_header
from drimbox.report.message import HL7_APPLICATION_INTERNAL_ERROR, Acceptance, ReportMessage

#: HL7 table 0357 (message error condition) texts for ERR-3.2.
ERROR_TEXTS = {
    "100": "Segment sequence error",
    "101": "Required field missing",
    "102": "Data type error",
    "103": "Table value not found",
    "200": "Unsupported message type",
    "201": "Unsupported event code",
    "202": "Unsupported processing id",
    "203": "Unsupported version id",
    "204": "Unknown key identifier",
    "205": "Duplicate key identifier",
    "206": "Application record locked",
    "207": "Application internal error",
}
DEFAULT_VERSION = "2.5"
#: ZAM_Z01 is a v2.6 structure of the CI-SIS profile.
ZAM_VERSION = "2.6"
ZAM_PROFILE = "2.1^CISIS_CDA_HL7_V2"
_OLD_ERR_VERSIONS = ("2.1", "2.2", "2.3", "2.3.1", "2.4")


def build_ack(
    acceptance: Acceptance,
    original: ReportMessage | None = None,
    raw: bytes = b"",
    *,
    app_name: str = "DRIMBOX",
    facility: str = "",
    control_id: str | None = None,
    now: datetime | None = None,
) -> bytes:
    """The ACK for `original` (or, when it could not be read, for what MSH of `raw` tells)."""
    header = _header(original, raw)
    msh = _msh(header, app_name, facility, f"ACK^{header.event}^ACK" if header.event else "ACK", control_id, now,
               header.version or DEFAULT_VERSION)  # fmt: skip
    segments = [msh, ["MSA", acceptance.code, escape(header.control_id), escape(acceptance.text)]]
    if acceptance.code != "AA":
        segments.append(_err(acceptance, header.version))
    return _encode(segments, header.charset)


def build_business_ack(
    original: ReportMessage,
    success: bool,
    *,
    error_code: str = "",
    error_text: str = "",
    app_name: str = "DRIMBOX",
    facility: str = "",
    control_id: str | None = None,
    now: datetime | None = None,
) -> bytes:
    """ZAM^Z01^ZAM_Z01, "accusé de réception DMP": did the DMP take the document of `original`?

    Layout (volet "Transmission de document(s) CDA-R2 en HL7v2" 2.1, ZAM_Z01 constraints):
    MSH v2.6 with MSH-21 `2.1^CISIS_CDA_HL7_V2`; OBX-1 `1`, OBX-2 `CWE`, OBX-3
    `ACK_RECEPTION_DMP^Accusé de réception DMP^AckMetierZAM`, OBX-4 the original MSH-10 (this is
    how the RIS matches the receipt to its message), OBX-5 `Y` (success) or `N` (failure)
    `^^expandedYes-NoIndicator`, OBX-11 `F`. On failure an ERR: ERR-3
    `207^Application error^messageErrorCondition`, ERR-4 `E`, ERR-5 the DMP's error
    `code^text^DMP_ERROR_CODE`, ERR-8 the text again for people. The volet puts no MSA in it:
    the ZAM is a message of its own, which the RIS acknowledges with an ACK.
    """
    header = _header(original, b"")
    msh = _msh(header, app_name, facility, "ZAM^Z01^ZAM_Z01", control_id, now, ZAM_VERSION)
    msh += [""] * (21 - len(msh)) + [ZAM_PROFILE]
    obx = ["OBX", "1", "CWE", "ACK_RECEPTION_DMP^Accusé de réception DMP^AckMetierZAM", escape(header.control_id),
           f"{'Y' if success else 'N'}^^expandedYes-NoIndicator", "", "", "", "", "", "F"]  # fmt: skip
    segments = [msh, obx]
    if not success:
        dmp_error = f"{escape(error_code)}^{escape(error_text)}^DMP_ERROR_CODE" if error_code or error_text else ""
        segments.append(["ERR", "", "", "207^Application error^messageErrorCondition", "E", dmp_error, "", "",
                         escape(error_text)])  # fmt: skip
    return _encode(segments, header.charset)


def _header(original: ReportMessage | None, raw: bytes) -> Header:
    """MSH as salvaged from the bytes, overridden by what the reader already established."""
    salvaged = salvage_header(original.raw if original is not None and original.raw else raw)
    if original is None:
        return salvaged
    return Header(
        control_id=original.control_id,
        message_code=original.message_type.split("^")[0],
        event=original.event,
        version=original.version,
        processing_id=salvaged.processing_id,
        sending_application=original.sending_application,
        sending_facility=original.sending_facility,
        receiving_application=original.receiving_application,
        receiving_facility=original.receiving_facility,
        country=salvaged.country,
        charset=original.charset,
    )


def _msh(header: Header, app_name: str, facility: str, message_type: str, control_id: str | None,
         now: datetime | None, version: str) -> list[str]:  # fmt: skip
    """MSH-0..18 (index = field number; MSH-1 is joined separately by `_encode`)."""
    moment = now if now is not None else datetime.now().astimezone()
    stamp = moment.strftime("%Y%m%d%H%M%S") + (moment.strftime("%z") if moment.tzinfo else "")
    processing = header.processing_id if header.processing_id in ("P", "T", "D") else "P"
    return [
        "MSH", "|", "^~\\&", escape(app_name), escape(facility),
        escape(header.sending_application), escape(header.sending_facility), stamp, "", message_type,
        escape(control_id or _new_control_id()), processing, escape(version), "", "", "", "",
        escape(header.country), _charset_label(header.charset),
    ]  # fmt: skip


def _err(acceptance: Acceptance, version: str) -> list[str]:
    code = acceptance.error_code or HL7_APPLICATION_INTERNAL_ERROR
    label = ERROR_TEXTS.get(code, "")
    location = "^".join(escape(part) for part in acceptance.error_location.split("^"))
    old = ""
    if version in _OLD_ERR_VERSIONS:
        parts = [*acceptance.error_location.split("^"), "", "", ""][:3]
        old = "^".join([*(escape(p) for p in parts), f"{code}&{escape(label)}&HL70357"])
    return ["ERR", old, location, f"{escape(code)}^{escape(label)}^HL70357", "E", "", "", "", escape(acceptance.text)]


def _charset_label(charset: str) -> str:
    label = " ".join(charset.split()).upper()
    return label if label in CHARSETS and label else DEFAULT_CHARSET


def _encode(segments: list[list[str]], charset: str) -> bytes:
    """Segments joined with `|` (MSH-1 is the separator itself) and CR, in the message's character set."""
    lines = []
    for fields in segments:
        while len(fields) > 2 and fields[-1] == "":
            fields = fields[:-1]
        if fields[0] == "MSH":
            lines.append("MSH|" + "|".join(fields[2:]))
        else:
            lines.append("|".join(fields))
    codec = codec_for(_charset_label(charset)) or "utf-8"
    return ("\r".join(lines) + "\r").encode(codec, errors="replace")


def _new_control_id() -> str:
    """MSH-10 is ST(20) up to v2.5: 20 hexadecimal characters are unique enough."""
    return uuid.uuid4().hex[:20].upper()
