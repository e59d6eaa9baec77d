"""HL7 v2 report messages → ReportMessage: the CI-SIS and DRIM-M samples, line endings, refusals, fuzzing."""

from __future__ import annotations

import base64
import re
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lxml import etree

from drimbox.hl7 import MessageUnreadable, read_message
from drimbox.hl7.er7 import Separators, escape, unescape
from drimbox.report.message import PatientIdentifier, ReportAction, ReportMessage

FIXTURES = Path(__file__).parents[1] / "fixtures"
CISIS = FIXTURES / "hl7v2-cisis"
T02 = CISIS / "mdm-t02-imaging-report-initial.er7"
T10 = CISIS / "mdm-t10-imaging-report-replace.er7"
T04 = CISIS / "mdm-t04-imaging-report-delete.er7"
ORU = CISIS / "oru-r01-report-initial.hl7"
POC = FIXTURES / "drim-m" / "hl7v2-oru-report-example.hl7"
OMI = FIXTURES / "drim-m-data" / "hl7v251-omi-o23-cancel-exam-W.hl7"

INS = PatientIdentifier("279035121518989", "ASIP-SANTE-INS-NIR", "1.2.250.1.213.1.4.10", "INS")
IPP = PatientIdentifier("IPP101", "AUT-AFFECTATION", "1.2.250.1.213.4.5.2.4", "PI")
CDA = "{urn:hl7-org:v3}ClinicalDocument"
SMALL_CDA = b'<?xml version="1.0" encoding="UTF-8"?><ClinicalDocument xmlns="urn:hl7-org:v3"/>'
PID = (
    "PID|||279035121518989^^^ASIP-SANTE-INS-NIR&1.2.250.1.213.1.4.10&ISO^INS^^~"
    "IPP101^^^AUT-AFFECTATION&1.2.250.1.213.4.5.2.4&ISO^PI||PAT-TROIS^DOMINIQUE^DOMINIQUE^^^^L||19790328|F"
    + "|" * 24
    + "VALI"
)


def oru(
    *,
    message_type: str = "ORU^R01^ORU_R01",
    version: str = "2.5",
    profile: str = "2.1^CISIS_CDA_HL7_V2",
    charset: str = "UNICODE UTF-8",
    pid: str = PID,
    orc: str = "ORC|NW",
    status: str = "F",
    obx5: str | None = None,
    facility: str = "CHU-Y",
    encoding: str = "utf-8",
) -> bytes:
    """A small CI-SIS ORU^R01 with a tiny CDA, every part replaceable."""
    document = obx5 if obx5 is not None else "^TEXT^XML^Base64^" + base64.b64encode(SMALL_CDA).decode()
    segments = [
        f"MSH|^~\\&|RIS-Y|{facility}|DRIMBOX|CHU-Y|20240101120000||{message_type}|42|P|{version}|||||FRA|{charset}"
        f"|||{profile}",
        pid,
        "PV1|1|O",
        orc,
        "OBR|1|||18748-4^CR d'imagerie médicale^LN",
        f"OBX|1|ED|18748-4^CR d'imagerie médicale^LN||{document}||||||{status}",
        "OBX|2|CE|DESTDMP^Destinataire DMP^MetaDMPMSS||Y^^expandedYes-NoIndicator||||||F",
    ]
    return "\r".join(s for s in segments if s).encode(encoding)


def refusal(raw: bytes) -> MessageUnreadable:
    with pytest.raises(MessageUnreadable) as caught:
        read_message(raw)
    return caught.value


def obx1_data(raw: bytes) -> bytes:
    """OBX-1's base64 payload, found with a regex rather than the reader under test."""
    match = re.search(rb"OBX\|1\|ED\|[^|]*\|\|\^[Tt][Ee][Xx][Tt]\^XML\^Base64\^([A-Za-z0-9+/=]+)\|", raw)
    assert match is not None
    data = match.group(1)
    return base64.b64decode(data + b"=" * (-len(data) % 4))


def omi(order_control: str = "CA") -> bytes:
    """The homologation OMI^O23 with its MSH placeholders filled as the test platform does."""
    raw = OMI.read_bytes()
    for placeholder, value in (
        (b"{{applicationSupplier}}", b"RIS-W"),
        (b"{{facilitySupplier}}", b"CHU-W"),
        (b"{{applicationReceiver}}", b"DRIMBOX"),
        (b"{{facilityReceiver}}", b"CHU-W"),
        (b"{{idMessage}}", b"20240912101500"),
    ):
        raw = raw.replace(placeholder, value)
    return raw.replace(b"ORC|CA|", b"ORC|" + order_control.encode() + b"|")


# --- the samples -----------------------------------------------------------------------------

FLAGS_T02 = {
    "MASQUE_PS": "N",
    "INVISIBLE_PATIENT": "Y",
    "INVISIBLE_REP_LEGAUX": "Y",
    "CONNEXION_SECRETE": "Y",
    "MODIF_CONF_CODE": "N",
    "DESTDMP": "Y",
    "DESTMSSANTEPS": "Y",
    "DESTMSSANTEPAT": "N",
    "ACK_RECEPTION": "N",
    "ACK_LECTURE_MSS": "N",
    "CORPSMAIL_PS": "Cher confrère, vous trouverez ci-joint le CR d’imagerie de M.Dupont",
}


def test_mdm_t02_initial_transmission() -> None:
    raw = T02.read_bytes()
    message = read_message(raw)
    assert message.control_id == "015"
    assert (message.message_type, message.event, message.version) == ("MDM^T02^MDM_T02", "T02", "2.6")
    assert message.action == ReportAction.PUBLISH
    assert (message.sending_application, message.sending_facility) == ("RIS-Y", "Organisation-Y")
    assert (message.receiving_application, message.receiving_facility) == ("PFI-Y", "Organisation-Y")
    assert message.charset == "UNICODE UTF-8"
    assert message.document_type == "18748-4"
    assert message.document_id == "1.2.250.1.71.4.2.2.120456789.71024000081"
    assert message.replaces_hint == ""
    assert (message.order_control, message.result_status) == ("NW", "F")
    assert message.patient_ids == (INS,)
    assert message.identity_reliability == "VALI"
    assert dict(message.flags) == FLAGS_T02
    assert message.flag("DESTDMP") and message.flag("INVISIBLE_PATIENT") and not message.flag("MASQUE_PS")
    assert message.document == obx1_data(raw)
    assert etree.fromstring(message.document).tag == CDA
    assert (message.study_uids, message.accession_number) == ((), "")
    assert message.raw == raw


def test_mdm_t10_replacement_names_the_replaced_document() -> None:
    message = read_message(T10.read_bytes())
    assert (message.event, message.action) == ("T10", ReportAction.REPLACE)
    assert (message.order_control, message.result_status) == ("RO", "C")
    assert message.document_id == "1.2.250.1.71.4.2.2.120456789.71024000082"
    assert message.replaces_hint == "1.2.250.1.71.4.2.2.120456789.71024000081"
    assert message.flags["MODIF_CONF_CODE"] == "Y"
    assert etree.fromstring(message.document).tag == CDA


def test_mdm_t04_deletion_with_unpadded_base64() -> None:
    raw = T04.read_bytes()
    message = read_message(raw)
    assert (message.event, message.action) == ("T04", ReportAction.DELETE)
    assert (message.order_control, message.result_status) == ("CA", "D")
    assert message.document == obx1_data(raw)  # the ANS example omits the final "=": forgiven
    assert message.document.endswith(b"</ClinicalDocument>\r\n")


def test_oru_r01_biology_report() -> None:
    raw = ORU.read_bytes()
    message = read_message(raw)
    assert (message.control_id, message.message_type, message.event, message.version) == (
        "015",
        "ORU^R01^ORU_R01",
        "R01",
        "2.5",
    )
    assert message.action == ReportAction.PUBLISH
    assert (message.sending_application, message.sending_facility) == ("SIL-Y", "labo")
    assert message.document_type == "11502-2"
    assert (message.order_control, message.result_status) == ("NW", "F")
    assert (message.document_id, message.replaces_hint) == ("", "")
    assert message.patient_ids == (INS,)
    assert message.identity_reliability == "VALI"
    assert message.document.startswith(b'<?xml version="1.0" encoding="UTF-8"?>')
    assert message.document == obx1_data(raw)
    assert etree.fromstring(message.document).tag == CDA
    assert {k: v for k, v in message.flags.items() if k != "CORPSMAIL_PS"} == {
        "MASQUE_PS": "N",
        "INVISIBLE_PATIENT": "N",
        "INVISIBLE_REP_LEGAUX": "N",
        "CONNEXION_SECRETE": "N",
        "MODIF_CONF_CODE": "N",
        "DESTDMP": "Y",
        "DESTMSSANTEPS": "Y",
        "DESTMSSANTEPAT": "Y",
        "ACK_RECEPTION": "Y",
        "ACK_LECTURE_MSS": "Y",
    }
    # its mail body is truncated base64 in the ANS example: read as far as it goes
    assert message.flags["CORPSMAIL_PS"].startswith("Cher confrère, vous trouverez ci-joint le CR")


def test_poc_v231_sample_without_pid() -> None:
    """Two leading blank lines, LF, no PID, 8859/1, bare base64 in OBX-5, no MetaDMPMSS system (DRIM-M §4.1)."""
    raw = POC.read_bytes()
    message = read_message(raw)
    assert (message.control_id, message.message_type, message.event, message.version) == (
        "104",
        "ORU^R01",
        "R01",
        "2.3.1",
    )
    assert message.action == ReportAction.PUBLISH
    assert message.charset == "8859/1"
    assert (message.sending_application, message.receiving_application) == ("FILLER", "BAPTISTE")
    assert message.patient_ids == ()
    assert message.identity_reliability == ""
    assert message.document_type == "18748-4"
    assert message.document.startswith(b'<ClinicalDocument xmlns="urn:hl7-org:v3"')
    assert etree.fromstring(message.document).tag == CDA
    assert message.flags == {}


def test_omi_o23_cancellation_of_exam_w() -> None:
    message = read_message(omi())
    assert (message.control_id, message.message_type, message.event, message.version) == (
        "001",
        "OMI^O23^OMI_O23",
        "O23",
        "2.5.1",
    )
    assert message.action == ReportAction.DELETE
    assert message.order_control == "CA"
    assert message.document == b""
    assert message.document_type == "18748-4"
    assert message.study_uids == ("1.2.250.1.213.4.5.2.1.124",)
    assert message.accession_number == "ACN124"
    assert message.patient_ids == (INS, IPP)
    assert message.identity_reliability == "VALI"
    assert (message.sending_application, message.sending_facility) == ("RIS-W", "CHU-W")
    assert (message.receiving_application, message.receiving_facility) == ("DRIMBOX", "CHU-W")
    assert message.charset == "UNICODE UTF-8"  # MSH-18 empty


def test_omi_new_order_and_unknown_order_control() -> None:
    assert read_message(omi("NW")).action == ReportAction.PUBLISH
    refused = refusal(omi("XO"))
    assert (refused.acceptance.code, refused.acceptance.error_code, refused.acceptance.error_location) == (
        "AE",
        "103",
        "ORC^1^1",
    )
    no_ipc = refusal(re.sub(rb"\r\nIPC\|[^\r]*", b"", omi()))
    assert (no_ipc.acceptance.code, no_ipc.acceptance.error_code, no_ipc.control_id) == ("AE", "100", "001")


# --- line endings, charsets, escapes --------------------------------------------------------


def _with_endings(raw: bytes, ending: bytes) -> bytes:
    return ending.join(re.split(rb"\r\n|\r|\n", raw.strip(b"\r\n")))


@pytest.mark.parametrize("path", [T02, T10, T04, ORU, POC, OMI], ids=lambda p: p.name)
def test_cr_lf_and_crlf_give_the_same_message(path: Path) -> None:
    variants = [_with_endings(path.read_bytes(), ending) for ending in (b"\r", b"\n", b"\r\n")]
    variants.append(b"\n\r\n\n" + variants[0] + b"\r\n")  # leading blank lines, trailing terminator
    first, *others = (replace(read_message(v), raw=b"") for v in variants)
    assert all(other == first for other in others)


def test_latin1_message() -> None:
    raw = oru(charset="8859/1", facility="Hôpital-Y", encoding="latin-1")
    assert "ô".encode("latin-1") in raw
    message = read_message(raw)
    assert message.sending_facility == "Hôpital-Y"
    assert message.charset == "8859/1"
    assert message.document == SMALL_CDA
    assert read_message(oru(charset="8859/15", facility="Hôpital-€", encoding="iso8859-15")).sending_facility == (
        "Hôpital-€"
    )


def test_bytes_not_in_the_declared_charset_are_refused_with_their_segment() -> None:
    raw = T02.read_text(encoding="utf-8").replace("’", "'").encode("latin-1")  # still says UNICODE UTF-8
    refused = refusal(raw)
    assert refused.acceptance == refused.acceptance.__class__("AE", refused.acceptance.text, "102", "OBR^1")
    assert refused.control_id == "015"


def test_unknown_charset() -> None:
    refused = refusal(oru(charset="ISO IR87"))
    assert (refused.acceptance.code, refused.acceptance.error_code, refused.acceptance.error_location) == (
        "AE",
        "103",
        "MSH^1^18",
    )


def test_escapes_are_decoded_in_text_fields() -> None:
    message = read_message(oru(facility="A\\F\\B\\S\\C\\T\\D\\R\\E\\E\\\\X41\\\\H\\"))
    assert message.sending_facility == "A|B^C&D~E\\A"


def test_other_separators() -> None:
    raw = oru().replace(b"|", b"#")
    assert read_message(raw) == replace(read_message(oru()), raw=raw)


def test_unescape_and_escape_round_trip() -> None:
    separators = Separators()
    assert unescape("a\\.br\\b\\N\\c\\Xzz\\d\\unterminated", separators) == "a\nbcd\\unterminated"
    text = "x|y^z&w~v\\u"
    assert unescape(escape(text), separators) == text
    assert escape("line\rbreak\x0b\x1c") == "line break  "


# --- refusals ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "code", "error_code", "location"),
    [
        (oru(message_type="ADT^A01^ADT_A01"), "AR", "200", "MSH^1^9"),
        (oru(message_type="ORU^R30^ORU_R30"), "AR", "201", "MSH^1^9"),
        (oru(version="2.7"), "AR", "203", "MSH^1^12"),
        (oru(profile="3.0^CISIS_CDA_HL7_V2"), "AR", "203", "MSH^1^21"),
        (oru(profile="1.0^SOMETHING_ELSE"), "AR", "203", "MSH^1^21"),
        (oru(pid=""), "AE", "100", "PID"),
        (oru(pid="PID|1||"), "AE", "101", "PID^1^3"),
        (oru(obx5="^TEXT^XML^Base64^PD94b*WwgdmVy"), "AE", "102", "OBX^1^5"),
        (oru(obx5="^TEXT^XML^Base64^" + base64.b64encode(SMALL_CDA).decode() + "Q"), "AE", "102", "OBX^1^5"),
        (oru(obx5="^TEXT^XML^Hex^3C3F"), "AE", "102", "OBX^1^5"),
        (oru(obx5="^TEXT^XML^Base64^"), "AE", "101", "OBX^1^5"),
        (oru(status="X"), "AE", "103", "OBX^1^11"),
    ],
    ids=[
        "adt",
        "oru-r30",
        "v2.7",
        "profile-3.0",
        "other-profile",
        "no-pid",
        "empty-pid-3",
        "bad-char",
        "bad-length",
        "hex",
        "empty-document",
        "status-x",
    ],
)
def test_refusals(raw: bytes, code: str, error_code: str, location: str) -> None:
    refused = refusal(raw)
    assert (refused.acceptance.code, refused.acceptance.error_code, refused.acceptance.error_location) == (
        code,
        error_code,
        location,
    )
    assert refused.control_id == "42"
    assert refused.acceptance.text


def test_wrong_type_names_it() -> None:
    assert "ADT^A01" in refusal(oru(message_type="ADT^A01^ADT_A01")).acceptance.text
    assert "ACK^T10" in refusal((CISIS / "ack-mdm-t10.er7").read_bytes()).acceptance.text


def test_profile_with_a_space_as_in_the_volet_example() -> None:
    assert read_message(oru(profile="2.1^ CISIS_CDA_HL7_V2")).action == ReportAction.PUBLISH
    assert read_message(oru(profile="")).action == ReportAction.PUBLISH


def test_missing_parts_of_mdm_messages() -> None:
    text = T02.read_bytes()
    no_document = refusal(re.sub(rb"\nOBX\|1\|ED\|[^\n]*", b"", text))
    assert (no_document.acceptance.code, no_document.acceptance.error_code) == ("AE", "101")
    no_txa = refusal(re.sub(rb"\nTXA\|[^\n]*", b"", text))
    assert (no_txa.acceptance.error_code, no_txa.acceptance.error_location) == ("100", "TXA")


@pytest.mark.parametrize(
    ("orc", "status", "action"),
    [
        ("ORC|NW", "F", ReportAction.PUBLISH),
        ("ORC|NW", "", ReportAction.PUBLISH),
        ("ORC|NW", "C", ReportAction.REPLACE),
        ("ORC|RO", "F", ReportAction.REPLACE),
        ("ORC|NW", "D", ReportAction.DELETE),
        ("ORC|CA", "F", ReportAction.DELETE),
        ("", "F", ReportAction.PUBLISH),
    ],
)
def test_oru_actions(orc: str, status: str, action: ReportAction) -> None:
    message = read_message(oru(orc=orc, status=status))
    assert message.action == action
    assert message.result_status == status


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"\r\n\r\n",
        b"\x00\x01\x02\xff",
        b"hello world",
        b"PID|||123",
        b"MSH",
        b"MSH|",
        b"MSH|^~\\&",
        b"MSHa^~\\&a",
        b"MSH|||||",
    ],
)
def test_garbage_is_refused_not_raised(raw: bytes) -> None:
    refused = refusal(raw)
    assert (refused.acceptance.code, refused.acceptance.error_code) == ("AR", "100")
    assert refused.control_id == ""


def test_truncated_message_msh_only() -> None:
    msh = oru().split(b"\r")[0]
    refused = refusal(msh)
    assert (refused.acceptance.code, refused.acceptance.error_location, refused.control_id) == ("AE", "PID", "42")
    legacy = refusal(oru(version="2.3.1").split(b"\r")[0])
    assert (legacy.acceptance.code, legacy.acceptance.error_code) == ("AE", "101")  # no document


def test_empty_control_id() -> None:
    refused = refusal(oru().replace(b"||ORU^R01^ORU_R01|42|", b"||ORU^R01^ORU_R01||"))
    assert (refused.acceptance.code, refused.acceptance.error_location) == ("AR", "MSH^1^10")


# --- fuzzing ----------------------------------------------------------------------------------


def _short(path: Path) -> bytes:
    """A fixture with its CDA cut to a few bytes, so that mutations land in the structure."""
    return re.sub(rb"(Base64\^)[A-Za-z0-9+/=]{200,}", rb"\1PD94bWwgdmVyc2lvbj0iMS4wIj8+", path.read_bytes())


SEEDS = [_short(p) for p in (T02, T10, T04, ORU, POC)] + [omi(), oru()]


def _read(raw: bytes) -> ReportMessage | None:
    try:
        return read_message(raw)
    except MessageUnreadable as exc:
        assert exc.acceptance.code in ("AE", "AR")
        return None


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=2000))
def test_random_bytes_never_raise_anything_else(raw: bytes) -> None:
    _read(raw)
    _read(b"MSH|^~\\&|" + raw)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from(SEEDS),
    st.lists(
        st.tuples(st.floats(0, 1), st.integers(0, 8), st.binary(max_size=8), st.sampled_from(["ins", "del", "sub"])),
        min_size=1,
        max_size=6,
    ),
)
def test_mutated_samples_never_raise_anything_else(seed: bytes, edits: list[tuple[float, int, bytes, str]]) -> None:
    data = bytearray(seed)
    for where, length, chunk, op in edits:
        at = int(where * len(data))
        if op == "ins":
            data[at:at] = chunk
        elif op == "del":
            del data[at : at + length]
        else:
            data[at : at + len(chunk)] = chunk
    _read(bytes(data))
