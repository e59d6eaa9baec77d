"""The Accept header of WADO-RS requests, and the choice of transfer syntax per instance.

PS3.18 §8.7.3: a client lists media types with `type`, `transfer-syntax` and `q` parameters;
DRIM-M consumers send ten `multipart/related; type="application/dicom";transfer-syntax=…;q=…;
boundary=**` entries (the `boundary` parameter is not standard; we tolerate and ignore it).
`transfer-syntax=*` and `type="*/*"` mean "as stored". We never produce a lossy syntax when the
client also accepts a lossless one, and answer 406 only when nothing listed can be produced.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from drimbox.errors import DrimboxError

EXPLICIT_VR_LE = "1.2.840.10008.1.2.1"
AS_STORED = "*"
MAX_HEADER = 16_384
MAX_ENTRIES = 64

# Syntaxes whose decoding does not give back the original pixels (PS3.5 §10 and Annex A).
LOSSY = frozenset(
    {
        "1.2.840.10008.1.2.4.50",
        "1.2.840.10008.1.2.4.51",
        "1.2.840.10008.1.2.4.81",
        "1.2.840.10008.1.2.4.91",
        "1.2.840.10008.1.2.4.93",
        "1.2.840.10008.1.2.4.100",
        "1.2.840.10008.1.2.4.101",
        "1.2.840.10008.1.2.4.102",
        "1.2.840.10008.1.2.4.103",
        "1.2.840.10008.1.2.4.104",
        "1.2.840.10008.1.2.4.105",
        "1.2.840.10008.1.2.4.106",
        "1.2.840.10008.1.2.4.107",
        "1.2.840.10008.1.2.4.108",
        "1.2.840.10008.1.2.4.111",
        "1.2.840.10008.1.2.4.113",
        "1.2.840.10008.1.2.4.202",
        "1.2.840.10008.1.2.4.204",
    }
)

_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+/[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
_UID_OR_STAR = re.compile(r"^(\*|[0-9]+(\.[0-9]+)*)$")


class NotAcceptable(DrimboxError):
    """Nothing the client accepts can be produced (HTTP 406)."""


class BadAccept(DrimboxError):
    """The Accept header cannot be parsed (HTTP 400)."""


@dataclass(frozen=True)
class MediaRange:
    """One entry of an Accept header."""

    media_type: str
    params: dict[str, str] = field(default_factory=dict)
    q: float = 1.0

    @property
    def part_type(self) -> str:
        """The media type of the parts, for `multipart/related` (its `type` parameter)."""
        return self.params.get("type", "").lower()

    @property
    def transfer_syntax(self) -> str | None:
        return self.params.get("transfer-syntax")


def _split(text: str, separator: str) -> list[str]:
    """Split on `separator` outside double quotes."""
    parts: list[str] = []
    current: list[str] = []
    quoted = False
    for char in text:
        if char == '"':
            quoted = not quoted
        if char == separator and not quoted:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    if quoted:
        raise BadAccept("unbalanced quote in the Accept header")
    parts.append("".join(current))
    return parts


def parse_accept(header: str | None) -> list[MediaRange]:
    """The media ranges of an Accept header, highest q first (ties keep the client's order)."""
    if header is None or not header.strip():
        return [MediaRange("*/*")]
    if len(header) > MAX_HEADER:
        raise BadAccept("the Accept header is too long")
    ranges: list[MediaRange] = []
    for entry in _split(header, ","):
        if not entry.strip():
            continue  # DRIM-M consumers end the list with a comma
        ranges.append(_parse_range(entry))
        if len(ranges) > MAX_ENTRIES:
            raise BadAccept(f"the Accept header lists more than {MAX_ENTRIES} media types")
    if not ranges:
        raise BadAccept("the Accept header lists no media type")
    return sorted(ranges, key=lambda r: -r.q)


def _parse_range(entry: str) -> MediaRange:
    pieces = _split(entry, ";")
    media_type = pieces[0].strip().lower()
    if not _TOKEN.match(media_type):
        raise BadAccept(f"not a media type: {media_type[:80]!r}")
    params: dict[str, str] = {}
    q = 1.0
    for piece in pieces[1:]:
        if not piece.strip():
            continue
        name, sep, value = piece.partition("=")
        name, value = name.strip().lower(), value.strip().strip('"').strip()
        if not sep or not name:
            raise BadAccept(f"malformed parameter {piece.strip()[:80]!r} in the Accept header")
        if name == "q":
            q = _quality(value)
        else:
            params[name] = value
    syntax = params.get("transfer-syntax")
    if syntax is not None and not _UID_OR_STAR.match(syntax):
        raise BadAccept(f"transfer-syntax {syntax[:80]!r} is not a UID or *")
    return MediaRange(media_type, params, q)


def _quality(value: str) -> float:
    try:
        q = float(value)
    except ValueError:
        raise BadAccept(f"q={value[:20]!r} is not a number") from None
    if not 0.0 <= q <= 1.0:
        raise BadAccept(f"q={value[:20]} is outside 0..1")
    return q


@dataclass(frozen=True)
class SyntaxChoice:
    """What a client accepts for DICOM parts: syntaxes by preference, whether 'as stored' is fine."""

    preferred: tuple[str, ...]
    any_syntax: bool

    @property
    def lossless_accepted(self) -> bool:
        return self.any_syntax or any(ts not in LOSSY for ts in self.preferred)

    def sends_as_stored(self, stored: str, *, transcode: bool) -> bool:
        """Whether `for_instance` chooses the stored syntax whatever can be transcoded: known
        without reading the instance (`can_transcode` may parse its file). If it does when
        anything can, it does when less can: the syntaxes before it were passed over without asking."""
        try:
            return self.for_instance(stored, lambda _stored, _target: True, transcode=transcode) == stored
        except NotAcceptable:
            return False

    def for_instance(self, stored: str, can_transcode: Callable[[str, str], bool], *, transcode: bool) -> str:
        """The syntax to send an instance stored in `stored` in.

        With `transcode` false (the default policy) the stored syntax wins whenever the client
        accepts it at all: transcoding costs CPU and never improves the pixels. Otherwise the
        client's order decides. Lossy output only when the client accepts nothing lossless.
        """
        if self.any_syntax or (stored in self.preferred and not transcode):
            return stored
        for syntax in self.preferred:
            if syntax == stored:
                return stored
            if syntax in LOSSY and self.lossless_accepted and stored not in LOSSY:
                continue
            if can_transcode(stored, syntax):
                return syntax
        raise NotAcceptable(
            f"this instance is stored in {stored} and cannot be sent in any transfer syntax the request accepts"
        )


_DICOM_TYPES = ("application/dicom", "*/*", "application/*")


def dicom_syntaxes(ranges: Sequence[MediaRange]) -> SyntaxChoice:
    """The DICOM transfer syntaxes acceptable for a retrieve of instances (PS3.18 §8.7.3.5)."""
    preferred: list[str] = []
    any_syntax = False
    for media in ranges:
        if media.q <= 0:
            continue
        if media.media_type == "multipart/related":
            part = media.part_type or "application/dicom"
        elif media.media_type in ("*/*", "multipart/*"):
            part = "*/*"
        else:
            continue  # a single-part application/dicom is not how WADO-RS answers; ignore it
        if part not in _DICOM_TYPES:
            continue
        syntax = media.transfer_syntax
        if syntax == AS_STORED or (part == "*/*" and syntax is None):
            any_syntax = True
        elif syntax is None:
            preferred.append(EXPLICIT_VR_LE)  # the default for application/dicom (PS3.18 §8.7.3.5.2)
        elif syntax not in preferred:
            preferred.append(syntax)
    if not preferred and not any_syntax:
        raise NotAcceptable('WADO-RS answers multipart/related; type="application/dicom"; the request accepts neither')
    return SyntaxChoice(tuple(preferred), any_syntax)


def accepts_json(ranges: Sequence[MediaRange]) -> bool:
    """Whether a metadata or search answer (`application/dicom+json`) is acceptable."""
    wanted = {"application/dicom+json", "application/json", "application/*", "*/*"}
    return any(media.q > 0 and media.media_type in wanted for media in ranges)
