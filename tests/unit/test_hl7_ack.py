"""ACK and ZAM^Z01 building: the CI-SIS ACK sample, ERR segments, salvaged headers, character sets."""

from __future__ import annotations

import re
from datetime import datetime
from pathlib import Path

import pytest

from drimbox.hl7 import MessageUnreadable, build_ack, build_business_ack, read_message
from drimbox.hl7.er7 import Message, Segment, parse
from drimbox.report.message import Acceptance, ReportMessage
from tests.unit.test_hl7_reading import POC, T10, oru

CISIS = Path(__file__).parents[1] / "fixtures" / "hl7v2-cisis"
WHEN = datetime(2021, 6, 6, 9, 32)


def segments(ack: bytes, encoding: str = "utf-8") -> dict[str, Segment]:
    """The ACK read back by our own ER7 reader (it accepts any message type), by segment name."""
    assert ack.endswith(b"\r") and b"\n" not in ack
    message: Message = parse(ack)
    assert message.codec == encoding
    return {segment.name: segment for segment in message.segments}


def unreadable(raw: bytes) -> MessageUnreadable:
    with pytest.raises(MessageUnreadable) as caught:
        read_message(raw)
    return caught.value


def test_aa_matches_the_cisis_sample() -> None:
    expected = (CISIS / "ack-mdm-t10.er7").read_bytes()
    message = read_message(T10.read_bytes())
    ack = build_ack(Acceptance("AA"), message, app_name="PFI-Y", facility="Organisation-Y", control_id="016", now=WHEN)
    assert ack.replace(b"\r", b"\n").replace(b"|20210606093200|", b"|202106060932|") == expected
    got = segments(ack)
    assert got["MSA"].get(2) == message.control_id == "015"


def test_ae_carries_err_in_the_v25_layout() -> None:
    message = read_message(oru())
    text = "the document | is ^ not & base64 ~ \\ at all\r(really)"
    ack = build_ack(Acceptance("AE", text, "102", "OBX^1^5"), message, now=WHEN)
    got = segments(ack)
    msh, msa, err = got["MSH"], got["MSA"], got["ERR"]
    assert (msh.get(3), msh.get(4), msh.get(5), msh.get(6)) == ("DRIMBOX", "", "RIS-Y", "CHU-Y")
    assert msh.joined(9) == "ACK^R01^ACK"
    assert (msh.get(11), msh.get(12), msh.get(17), msh.get(18)) == ("P", "2.5", "FRA", "UNICODE UTF-8")
    assert (msa.get(1), msa.get(2)) == ("AE", "42")
    assert msa.get(3) == err.get(8) == text.replace("\r", " ")
    assert err.get(1) == ""
    assert err.joined(2) == "OBX^1^5"
    assert err.joined(3) == "102^Data type error^HL70357"
    assert err.get(4) == "E"


def test_each_ack_has_a_new_control_id() -> None:
    message = read_message(oru())
    ids = {segments(build_ack(Acceptance("AA"), message))["MSH"].get(10) for _ in range(5)}
    assert len(ids) == 5
    assert all(len(i) <= 20 and i != "42" for i in ids)


def test_refusal_of_an_unreadable_message_uses_its_salvaged_msh() -> None:
    raw = oru(message_type="ADT^A01^ADT_A01", version="2.5.1").replace(b"|P|", b"|T|")
    refused = unreadable(raw)
    got = segments(build_ack(refused.acceptance, None, raw))
    assert (got["MSH"].get(5), got["MSH"].get(6)) == ("RIS-Y", "CHU-Y")
    assert got["MSH"].joined(9) == "ACK^A01^ACK"
    assert (got["MSH"].get(11), got["MSH"].get(12)) == ("T", "2.5.1")
    assert (got["MSA"].get(1), got["MSA"].get(2)) == ("AR", "42")
    assert got["ERR"].joined(3) == "200^Unsupported message type^HL70357"


@pytest.mark.parametrize("raw", [b"", b"\x00garbage\xff", b"MSH|", b"MSHx"])
def test_garbage_still_gets_an_ack(raw: bytes) -> None:
    refused = unreadable(raw)
    got = segments(build_ack(refused.acceptance, None, raw))
    assert got["MSH"].joined(9) == "ACK"
    assert (got["MSH"].get(5), got["MSH"].get(12), got["MSH"].get(18)) == ("", "2.5", "UNICODE UTF-8")
    assert (got["MSA"].get(1), got["MSA"].get(2)) == ("AR", "")
    assert got["ERR"].get(3) == "100"


def test_written_in_the_message_charset() -> None:
    message = read_message(oru(charset="8859/1", facility="Hôpital-Y", encoding="latin-1"))
    ack = build_ack(Acceptance("AE", "référence inconnue ✓", "204"), message, facility="Clinique Évry")
    assert "Hôpital-Y|Clinique".encode("latin-1") not in ack  # their facility goes to MSH-6, ours to MSH-4
    assert "|Clinique Évry|RIS-Y|Hôpital-Y|".encode("latin-1") in ack
    got = segments(ack, "latin-1")
    assert got["MSH"].get(18) == "8859/1"
    assert got["MSA"].get(3) == "référence inconnue ?"  # what Latin-1 cannot hold


def test_old_versions_also_get_err_1() -> None:
    message = read_message(POC.read_bytes())
    got = segments(build_ack(Acceptance("AE", "no INS", "101", "PID^1^3"), message), "latin-1")
    assert got["MSH"].get(12) == "2.3.1"
    assert got["ERR"].joined(1) == "PID^1^3^101"
    assert got["ERR"].get(1, 4, 2) == "Required field missing"
    assert got["ERR"].joined(2) == "PID^1^3"


def test_ae_without_code_defaults_to_207() -> None:
    got = segments(build_ack(Acceptance("AE", "oops"), read_message(oru())))
    assert got["ERR"].get(3) == "207"


def test_no_framing_bytes_can_leak_into_an_ack() -> None:
    message = read_message(oru())
    ack = build_ack(Acceptance("AR", "bad\x0b\x1c\r\nthing", "100", "PID\r^1"), message, app_name="A\x1cB")
    assert not re.search(rb"[\x00-\x0c\x0e-\x1f]", ack)
    assert ack.count(b"\r") == 3


def test_business_ack_success() -> None:
    message = read_message(T10.read_bytes())
    got = segments(build_business_ack(message, True, app_name="PFI-Y", facility="Organisation-Y"))
    msh, obx = got["MSH"], got["OBX"]
    assert msh.joined(9) == "ZAM^Z01^ZAM_Z01"
    assert (msh.get(3), msh.get(4), msh.get(5), msh.get(6)) == ("PFI-Y", "Organisation-Y", "RIS-Y", "Organisation-Y")
    assert (msh.get(12), msh.get(17), msh.get(18), msh.joined(21)) == ("2.6", "FRA", "UNICODE UTF-8",
                                                                       "2.1^CISIS_CDA_HL7_V2")  # fmt: skip
    assert (obx.get(1), obx.get(2)) == ("1", "CWE")
    assert obx.joined(3) == "ACK_RECEPTION_DMP^Accusé de réception DMP^AckMetierZAM"
    assert obx.get(4) == "015"
    assert obx.joined(5) == "Y^^expandedYes-NoIndicator"
    assert obx.get(11) == "F"
    assert "ERR" not in got and "MSA" not in got


def test_business_ack_failure_quotes_the_dmp() -> None:
    message = read_message(oru(charset="8859/1", encoding="latin-1"))
    zam = build_business_ack(message, False, error_code="DMPPatientNotFound", error_text="Patient inconnu | DMP fermé")
    got = segments(zam, "latin-1")
    assert got["OBX"].get(5) == "N"
    assert got["OBX"].get(4) == "42"
    err = got["ERR"]
    assert err.joined(3) == "207^Application error^messageErrorCondition"
    assert err.get(4) == "E"
    assert (err.get(5, 1), err.get(5, 2), err.get(5, 3)) == (
        "DMPPatientNotFound",
        "Patient inconnu | DMP fermé",
        "DMP_ERROR_CODE",
    )
    assert err.get(8) == "Patient inconnu | DMP fermé"


def test_business_ack_for_a_message_without_raw() -> None:
    message = ReportMessage("77", "MDM^T02^MDM_T02", "T02", "2.6", read_message(oru()).action, b"x", "18748-4")
    got = segments(build_business_ack(message, True))
    assert got["OBX"].get(4) == "77"
    assert got["MSH"].get(18) == "UNICODE UTF-8"
