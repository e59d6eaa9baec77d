"""ER7 (pipe-and-hat) text: line endings, character set, structure and escapes.

python-hl7 splits a message into segments, fields, repetitions, components and subcomponents.
What it lacks is handled here: it only knows CR as segment terminator (the CI-SIS examples use
LF, the DRIM-M data CRLF, the PoC sample leading blank lines: DRIM-M §4.1), it decodes no
MSH-18 character set, its tree is irregular (a field without separators is a bare string), and
its unescaping logs field contents (patient data) through the deprecated `Logger.warn`. So the
bytes are normalised and decoded first, `hl7.parse` splits, and the tree is turned into a
regular one whose leaves are unescaped by `unescape` below.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

import hl7

from drimbox.errors import DrimboxError
from drimbox.report.message import (
    HL7_DATA_TYPE_ERROR,
    HL7_SEGMENT_SEQUENCE_ERROR,
    HL7_TABLE_VALUE_NOT_FOUND,
    Acceptance,
)

#: MSH-18 values (HL7 table 0211) we decode, and the Python codec for each; empty means UTF-8.
CHARSETS = {
    "": "utf-8",
    "UNICODE UTF-8": "utf-8",
    "8859/1": "latin-1",
    "8859/15": "iso8859-15",
    "ASCII": "ascii",
}
DEFAULT_CHARSET = "UNICODE UTF-8"

_BOM = b"\xef\xbb\xbf"
_LEADING = b" \t\r\n"
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")

#: One field: repetitions, each a tuple of components, each a tuple of subcomponents (still escaped).
Field = tuple[tuple[tuple[str, ...], ...], ...]


class MessageUnreadable(DrimboxError):
    """The boundary cannot turn these bytes into a `ReportMessage`; `acceptance` is the ACK to send.

    AR means the message as a whole is not for us (type, version, structure); AE that its content
    is faulty. `control_id` is MSH-10 when it could be read, else empty.
    """

    def __init__(self, acceptance: Acceptance, control_id: str) -> None:
        super().__init__(acceptance.text)
        self.acceptance = acceptance
        self.control_id = control_id


def unreadable(
    code: Literal["AE", "AR"], text: str, error_code: str, location: str, control_id: str
) -> MessageUnreadable:
    """A `MessageUnreadable` carrying its acceptance."""
    return MessageUnreadable(Acceptance(code, text, error_code, location), control_id)


@dataclass(frozen=True)
class Separators:
    """MSH-1 and MSH-2 (HL7 v2 §2.5.4); HL7's defaults fill what MSH-2 leaves out."""

    field: str = "|"
    component: str = "^"
    repetition: str = "~"
    escape: str = "\\"
    subcomponent: str = "&"


def codec_for(charset: str) -> str | None:
    """The Python codec for an MSH-18 value, or None when we do not support it."""
    return CHARSETS.get(" ".join(charset.split()).upper())


def unescape(value: str, separators: Separators, codec: str = "utf-8") -> str:
    """Resolve HL7 escape sequences (§2.7): \\F\\ \\S\\ \\T\\ \\R\\ \\E\\, \\Xhh..\\, \\.br\\.

    Formatting sequences (\\H\\, \\N\\, \\.sp\\ ...) and unknown ones are dropped; an escape
    character without its closing twin is kept as written.
    """
    esc = separators.escape
    if esc not in value:
        return value
    named = {
        "F": separators.field,
        "S": separators.component,
        "T": separators.subcomponent,
        "R": separators.repetition,
        "E": esc,
        ".br": "\n",
    }
    out: list[str] = []
    start = 0
    while (begin := value.find(esc, start)) >= 0:
        end = value.find(esc, begin + 1)
        if end < 0:
            break
        out.append(value[start:begin])
        sequence = value[begin + 1 : end]
        if sequence in named:
            out.append(named[sequence])
        elif sequence[:1] == "X":
            out.append(_hex(sequence[1:], codec))
        start = end + 1
    out.append(value[start:])
    return "".join(out)


def _hex(digits: str, codec: str) -> str:
    try:
        return bytes.fromhex(digits).decode(codec, errors="replace")
    except ValueError:
        return ""


def escape(value: str) -> str:
    """`value` made safe for a field written with the standard separators; control characters become spaces."""
    text = value.replace("\\", "\\E\\")
    for char, sequence in (("|", "\\F\\"), ("^", "\\S\\"), ("&", "\\T\\"), ("~", "\\R\\")):
        text = text.replace(char, sequence)
    return _CONTROL.sub(" ", text)


@dataclass(frozen=True)
class Segment:
    """One segment; `fields[n]` is HL7 field n (for MSH too: fields[1] is MSH-1, the field separator)."""

    name: str
    fields: tuple[Field, ...]
    separators: Separators = Separators()
    codec: str = "utf-8"

    def get(self, field: int, component: int = 1, subcomponent: int = 1, repetition: int = 1) -> str:
        """The unescaped value at that position, or "" when the message does not go that far."""
        try:
            value = self.fields[field][repetition - 1][component - 1][subcomponent - 1]
        except IndexError:
            return ""
        if self.name == "MSH" and field in (1, 2):
            return value
        return unescape(value, self.separators, self.codec)

    def repetitions(self, field: int) -> int:
        """How many repetitions field `field` has (0 when absent)."""
        return len(self.fields[field]) if field < len(self.fields) else 0

    def joined(self, field: int, repetition: int = 1) -> str:
        """The components of one repetition joined with `^`, trailing empty ones dropped (e.g. MSH-9)."""
        if field >= len(self.fields) or repetition > len(self.fields[field]):
            return ""
        count = len(self.fields[field][repetition - 1])
        parts = [self.get(field, c, repetition=repetition) for c in range(1, count + 1)]
        return "^".join(parts).rstrip("^")


@dataclass(frozen=True)
class Message:
    """A decoded message: its segments in order, the separators, and MSH-18 as written."""

    segments: tuple[Segment, ...]
    separators: Separators
    charset: str
    codec: str

    @property
    def header(self) -> Segment:
        return self.segments[0]

    def all(self, name: str) -> list[Segment]:
        return [segment for segment in self.segments if segment.name == name]

    def first(self, name: str) -> Segment | None:
        return next((segment for segment in self.segments if segment.name == name), None)


def separators_of(first_line: str) -> Separators | None:
    """The separators MSH-1/MSH-2 declare, or None when they are unusable (missing, repeated, alphanumeric)."""
    if len(first_line) < 5 or not first_line.startswith("MSH"):
        return None
    field = first_line[3]
    end = first_line.find(field, 4)
    encoding = first_line[4:end] if end >= 0 else ""
    if not 1 <= len(encoding) <= 5:
        return None
    chars = (field, *(encoding[i] if i < len(encoding) else d for i, d in enumerate(("^", "~", "\\", "&"))))
    if len(set(chars)) != 5 or not all(c.isascii() and c.isprintable() and not c.isalnum() and c != " " for c in chars):
        return None
    return Separators(field=chars[0], component=chars[1], repetition=chars[2], escape=chars[3], subcomponent=chars[4])


def parse(raw: bytes) -> Message:
    """Decode and split `raw`; raise `MessageUnreadable` when it is not an HL7 v2 message we can read.

    Accepts CR, LF and CRLF as segment terminators, leading blank lines and a UTF-8 BOM; drops
    empty segments. The charset is MSH-18 (`CHARSETS`).
    """
    body = raw.lstrip(_LEADING)
    if body.startswith(_BOM):
        body = body[len(_BOM) :].lstrip(_LEADING)
    if not body.startswith(b"MSH"):
        raise unreadable("AR", "not an HL7 v2 message: no MSH segment at the start", HL7_SEGMENT_SEQUENCE_ERROR,
                         "MSH^1", "")  # fmt: skip
    body = body.replace(b"\r\n", b"\r").replace(b"\n", b"\r")
    header = salvage_header(body)
    separators = separators_of(body.split(b"\r", 1)[0].decode("latin-1"))
    if separators is None:
        raise unreadable("AR", "MSH-1/MSH-2 do not declare usable separators", HL7_SEGMENT_SEQUENCE_ERROR, "MSH^1^2",
                         header.control_id)  # fmt: skip
    codec = codec_for(header.charset)
    if codec is None:
        raise unreadable("AE", f"unsupported character set {header.charset!r} in MSH-18", HL7_TABLE_VALUE_NOT_FOUND,
                         "MSH^1^18", header.control_id)  # fmt: skip
    try:
        text = body.decode(codec)
    except UnicodeDecodeError as exc:
        raise unreadable("AE", f"bytes not valid in {header.charset or DEFAULT_CHARSET}", HL7_DATA_TYPE_ERROR,
                         _location_at(body, exc.start), header.control_id) from exc  # fmt: skip
    lines = [line for line in text.split("\r") if line.strip()]
    try:
        tree = hl7.parse("\r".join(lines))
    except (hl7.ParseException, ValueError, IndexError, AssertionError) as exc:
        raise unreadable("AR", "the message cannot be split into segments", HL7_SEGMENT_SEQUENCE_ERROR, "MSH^1",
                         header.control_id) from exc  # fmt: skip
    segments = tuple(_segment(node, separators, codec) for node in tree)
    return Message(segments, separators, header.charset, codec)


def _location_at(body: bytes, offset: int) -> str:
    """ERR-2 location (segment^sequence) of the segment holding byte `offset`."""
    lines = body[:offset].split(b"\r")
    name = lines[-1][:3].decode("ascii", errors="replace")
    sequence = sum(1 for line in lines if line[:3] == lines[-1][:3])
    return f"{name}^{sequence}"


def _segment(node: object, separators: Separators, codec: str) -> Segment:
    fields = tuple(_field(child) for child in _children(node))
    name = fields[0][0][0][0] if fields and fields[0] and fields[0][0] and fields[0][0][0] else ""
    return Segment(name.strip(), fields, separators, codec)


def _children(node: object) -> list[object]:
    """python-hl7 containers are lists; where a level has no separator it holds a bare string."""
    return list(node) if isinstance(node, list) else [node]


def _field(node: object) -> Field:
    return tuple(_repetition(child) for child in _children(node))


def _repetition(node: object) -> tuple[tuple[str, ...], ...]:
    return tuple(_component(child) for child in _children(node))


def _component(node: object) -> tuple[str, ...]:
    return tuple(child if isinstance(child, str) else "" for child in _children(node))


@dataclass(frozen=True)
class Header:
    """What MSH tells, as far as it can be read; used to answer even unreadable messages."""

    control_id: str = ""
    message_code: str = ""
    event: str = ""
    structure: str = ""
    version: str = ""
    processing_id: str = ""
    sending_application: str = ""
    sending_facility: str = ""
    receiving_application: str = ""
    receiving_facility: str = ""
    country: str = ""
    charset: str = ""
    profile: tuple[tuple[str, str], ...] = ()

    @classmethod
    def of(cls, msh: Segment) -> Header:
        return cls(
            control_id=msh.get(10).strip(),
            message_code=msh.get(9, 1).strip().upper(),
            event=msh.get(9, 2).strip().upper(),
            structure=msh.get(9, 3).strip().upper(),
            version=msh.get(12).strip(),
            processing_id=msh.get(11).strip(),
            sending_application=msh.get(3).strip(),
            sending_facility=msh.get(4).strip(),
            receiving_application=msh.get(5).strip(),
            receiving_facility=msh.get(6).strip(),
            country=msh.get(17).strip(),
            charset=msh.get(18).strip(),
            profile=tuple(
                (msh.get(21, 1, repetition=r).strip(), msh.get(21, 2, repetition=r).strip())
                for r in range(1, msh.repetitions(21) + 1)
            ),
        )


def salvage_header(raw: bytes) -> Header:
    """MSH fields of `raw` read leniently (never raises): an empty `Header` when there is no usable MSH."""
    start = raw.find(b"MSH")
    if start < 0:
        return Header()
    line = re.split(rb"[\r\n]", raw[start : start + 4096], maxsplit=1)[0]
    separators = separators_of(line.decode("latin-1"))
    if separators is None:
        return Header()
    first = _split_msh(line.decode("latin-1"), separators, "latin-1")
    codec = codec_for(first.charset) or "utf-8"
    return _split_msh(line.decode(codec, errors="replace"), separators, codec)


def _split_msh(line: str, separators: Separators, codec: str) -> Header:
    try:
        tree = hl7.parse(line)
    except (hl7.ParseException, ValueError, IndexError, AssertionError):
        return Header()
    return Header.of(_segment(tree[0], separators, codec))
