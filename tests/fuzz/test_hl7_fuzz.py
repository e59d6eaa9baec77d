"""HL7 v2 bytes from a RIS: whatever arrives, the reader answers a ReportMessage or MessageUnreadable,
the ACK for it can be built and read back, and the MLLP decoder never fails.

Seeds are the CI-SIS and DRIM-M sample messages. Their base64 CDA (300 KB) is swapped for a small
one in most runs, so edits land in the segments the reader judges; one test damages the full ones.
"""

from __future__ import annotations

import base64
import re
from pathlib import Path

from hypothesis import event, given
from hypothesis import strategies as st

from drimbox.hl7 import MessageUnreadable, build_ack, read_message
from drimbox.hl7.er7 import parse
from drimbox.hl7.framing import END, HEAD_BYTES, START, Frame, FrameDecoder, Oversize, frame
from drimbox.report.message import Acceptance, ReportAction, ReportMessage
from tests.fuzz.damage import budget, damaged, without_long_base64

FIXTURES = Path(__file__).parents[1] / "fixtures"
SAMPLES = sorted(
    [*(FIXTURES / "hl7v2-cisis").glob("*.er7"), *(FIXTURES / "hl7v2-cisis").glob("*.hl7"),
     FIXTURES / "drim-m" / "hl7v2-oru-report-example.hl7", *(FIXTURES / "drim-m-data").glob("*.hl7")]
)  # fmt: skip
FULL = [path.read_bytes() for path in SAMPLES]
SMALL_CDA = base64.b64encode(b'<?xml version="1.0"?><ClinicalDocument xmlns="urn:hl7-org:v3"><id root="1.2"/>'
                             b"</ClinicalDocument>")  # fmt: skip
SMALL = [without_long_base64(raw, SMALL_CDA) for raw in FULL]
ACCEPTED = Acceptance("AA", "report taken")

# --- structure-aware edits ---------------------------------------------------------------------

HUGE = (1, 100, 5_000, 70_000)
FIELD_VALUES = st.one_of(
    st.builds(lambda chunk, n: chunk * n,
              st.sampled_from([b"A", b"^", b"~", b"&", b"\\", b"|", b"\\X41", b"\\.br\\", b"\\E\\", b"\xc3\xa9",
                               b"\xff", b"=", b"\x00"]),
              st.sampled_from(HUGE)),
    st.binary(max_size=40),
    st.text(max_size=40).map(str.encode),
    st.sampled_from([b"", b"\\", b"\\X\\", b"\\XZZ\\", b"\\Xfffe\\", b"\\Xc3\\", b"^^^^", b"ED", b"F", b"C", b"D",
                     b"^TEXT^XML^Base64^", b"^TEXT^XML^Base64^====", b"^TEXT^XML^Base64^A", b"^TEXT^XML^Base64^@@",
                     b"^TEXT^XML^B64^" + SMALL_CDA, b"ACCESS^x^METADMPMSS", b"NW", b"CA", b"RO"]),
)  # fmt: skip
HEADER_VALUES = {
    2: [b"^~\\&", b"", b"^", b"^^^^", b"^~\\&#", b"abcd", b"^~\\&^", b"\xe9~\\&", b"^~\\&\\", b" ~\\&"],
    9: [b"ORU^R01^ORU_R01", b"MDM^T02", b"MDM^T10", b"MDM^T04", b"OMI^O23", b"ACK", b"ORU", b"^", b"", b"oru^r01"],
    10: [b"", b" ", b"1" * 300, b"\\F\\", b"\x1c", b"\xc3\xa9"],
    12: [b"2.3.1", b"2.4", b"2.5", b"2.5.1", b"2.6", b"2.7", b"", b"2.5~2.6", b"2.5^x"],
    18: [b"UNICODE UTF-8", b"8859/1", b"8859/15", b"ASCII", b"UTF-16", b"", b"8859/1~UNICODE UTF-8", b"unicode  utf-8"],
    21: [b"2.1^CISIS_CDA_HL7_V2", b"", b"3^CISIS_CDA_HL7_V2", b"^", b"~", b"2^cisis_cda_hl7_v2~1^OTHER"],
}
NAMES = [b"MSH", b"PID", b"PV1", b"OBX", b"TXA", b"ORC", b"OBR", b"IPC", b"EVN", b"ZZZ", b"", b"MS", b"MSA"]


@st.composite
def restructured(draw: st.DrawFn, seed: bytes) -> bytes:
    """`seed` with segments shuffled, dropped, repeated or renamed, fields replaced (huge ones too)."""
    segments = [line for line in re.split(rb"\r\n|\r|\n", seed) if line]
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(segments) - 1)) if segments else 0
        edit = draw(st.sampled_from(("shuffle", "drop", "repeat", "rename", "field", "field", "header", "header")))
        keep = 0 if draw(st.integers(0, 7)) == 0 else 1  # MSH mostly stays first: the rest is what is tested
        if not segments:
            segments.append(b"MSH|^~\\&|")
        elif edit == "shuffle":
            segments = segments[:keep] + draw(st.permutations(segments[keep:]))
        elif edit == "drop":
            del segments[at]
        elif edit == "repeat":
            segments.insert(draw(st.integers(0, len(segments))), segments[at])
        elif edit == "rename":
            segments[at] = draw(st.sampled_from(NAMES)) + segments[at][3:]
        elif edit == "field":
            fields = segments[at].split(b"|")
            number = draw(st.integers(1, len(fields) + 3))
            fields += [b""] * (number + 1 - len(fields))
            fields[number] = draw(FIELD_VALUES)
            segments[at] = b"|".join(fields)
        else:
            header = next((i for i, line in enumerate(segments) if line.startswith(b"MSH")), 0)
            fields = segments[header].split(b"|")
            number = draw(st.sampled_from(sorted(HEADER_VALUES)))
            fields += [b""] * (number - len(fields))
            fields[number - 1] = draw(st.sampled_from(HEADER_VALUES[number]))
            segments[header] = b"|".join(fields)
    ending = draw(st.sampled_from([b"\r", b"\n", b"\r\n"]))
    prefix = draw(st.sampled_from([b"", b"", b"\r\n\r\n", b"\xef\xbb\xbf", b"  \n"]))
    return prefix + ending.join(segments) + ending


def _read(raw: bytes) -> None:
    """The outcome the MLLP listener relies on: a message or MessageUnreadable, then an ACK it can send."""
    try:
        message: ReportMessage | None = read_message(raw)
    except MessageUnreadable as refused:
        message = None
        acceptance = refused.acceptance
        assert acceptance.code in ("AE", "AR") and acceptance.text and acceptance.error_code
        event(f"refused {acceptance.code} {acceptance.error_code} {acceptance.text[:30]}")
    else:
        assert message.control_id and message.action in ReportAction
        assert message.document or message.message_type.startswith("OMI")
        acceptance = ACCEPTED
        event(f"read {message.message_type} {message.action}")
    ack = build_ack(acceptance, message, raw, now=None)
    assert START not in ack and b"\x1c" not in ack  # one MLLP frame, whatever the message held
    answer = parse(ack)
    msa = answer.first("MSA")
    assert answer.header.name == "MSH" and msa is not None and msa.get(1) == acceptance.code


@budget(400)
@given(st.one_of(st.binary(max_size=3000), st.binary(max_size=3000).map(lambda raw: b"MSH|^~\\&|" + raw)))
def test_random_bytes_are_read_or_refused(raw: bytes) -> None:
    _read(raw)


@budget(600)
@given(st.sampled_from(SMALL).flatmap(restructured))
def test_restructured_samples_are_read_or_refused(raw: bytes) -> None:
    _read(raw)


@budget(500)
@given(st.sampled_from(SMALL).flatmap(restructured), st.data())
def test_restructured_then_damaged_samples_are_read_or_refused(raw: bytes, data: st.DataObject) -> None:
    keep = data.draw(st.sampled_from([0, *[raw.find(b"MSH|") + 9] * 3]))  # MSH-1, MSH-2 mostly intact
    _read(data.draw(damaged(raw, tokens=(b"|", b"^", b"~", b"\\", b"&"), keep=keep)))


@budget(60)
@given(st.sampled_from(FULL).flatmap(lambda raw: damaged(raw, hot=1500, max_edits=3, keep=9)))
def test_damaged_full_size_samples_are_read_or_refused(raw: bytes) -> None:
    _read(raw)


# --- MLLP framing ------------------------------------------------------------------------------

WIRE = st.lists(
    st.sampled_from([START, b"\x1c", b"\r", END, b"MSH|", b"A" * 50]) | st.binary(max_size=24), max_size=40
).map(b"".join)


def _decode(stream: bytes, cuts: list[int], max_bytes: int) -> tuple[list[Frame | Oversize], FrameDecoder]:
    decoder = FrameDecoder(max_bytes)
    out: list[Frame | Oversize] = []
    position = 0
    for cut in cuts:
        out += decoder.feed(stream[position : position + cut])
        position += cut
    out += decoder.feed(stream[position:])
    return out, decoder


@budget(500)
@given(WIRE, st.lists(st.integers(1, 64), max_size=30))
def test_any_chunking_of_any_stream_gives_the_same_frames(stream: bytes, cuts: list[int]) -> None:
    whole, one = _decode(stream, [], 1 << 20)
    chunked, many = _decode(stream, cuts, 1 << 20)
    assert chunked == whole
    assert (many.discarded, many.restarted, many.pending) == (one.discarded, one.restarted, one.pending)
    for item in whole:
        assert isinstance(item, Frame) and START not in item.payload and END not in item.payload
    assert len(whole) <= stream.count(END)


@budget(500)
@given(WIRE, st.lists(st.integers(1, 64), max_size=30), st.integers(1, 80))
def test_a_small_limit_ends_the_stream_with_one_oversize(stream: bytes, cuts: list[int], limit: int) -> None:
    out, decoder = _decode(stream, cuts, limit)
    oversize = [i for i, item in enumerate(out) if isinstance(item, Oversize)]
    assert oversize in ([], [len(out) - 1])
    for item in out:
        if isinstance(item, Frame):
            assert len(item.payload) <= limit and START not in item.payload and END not in item.payload
        else:
            assert len(item.head) <= min(HEAD_BYTES, len(stream))
    if oversize:
        assert decoder.feed(frame(b"MSH|^~\\&|")) == []  # nothing is decoded after an oversize frame
