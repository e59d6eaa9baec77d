"""MTOM/XOP over HTTP (W3C SOAP 1.2 MTOM, XOP 1.0, RFC 2387): reading requests, writing answers.

The DMP takes ITI-41 only as MTOM (DRIM-M §4.5): `multipart/related; type="application/xop+xml";
start="<…>"; start-info="application/soap+xml"`, the root part `application/xop+xml;
type="application/soap+xml"`, documents in their own parts referenced by `xop:Include
href="cid:…"`, each part binary or base64 (`Content-Transfer-Encoding`). Reading is strict on the
MIME framing (CRLF line ends, a closing delimiter, unique Content-IDs) because a lenient parser
would hide exactly the bugs a real CXF endpoint rejects.
"""

from __future__ import annotations

import base64
import binascii
import re
import uuid
from dataclasses import dataclass, field
from email.message import Message
from urllib.parse import unquote

from drimbox.sandbox.dmp.answers import Fault

_BOUNDARY = re.compile(r"[0-9A-Za-z'()+_,\-./:=? ]{0,69}[0-9A-Za-z'()+_,\-./:=?]")  # RFC 2046 §5.1.1 bchars
_TOKEN_PARAM = re.compile(r';\s*([A-Za-z0-9_.-]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^;\s]*)')


@dataclass(frozen=True)
class MediaType:
    """A parsed Content-Type: lower-case type/subtype and its parameters (names lower-cased)."""

    value: str
    params: dict[str, str] = field(default_factory=dict)

    @classmethod
    def parse(cls, header: str) -> MediaType:
        main, _, rest = header.partition(";")
        params: dict[str, str] = {}
        for match in _TOKEN_PARAM.finditer(";" + rest):
            raw = match.group(2)
            value = re.sub(r"\\(.)", r"\1", raw[1:-1]) if raw.startswith('"') else raw
            params[match.group(1).lower()] = value
        return cls(main.strip().lower(), params)


@dataclass(frozen=True)
class Part:
    content_id: str
    media_type: MediaType
    data: bytes


@dataclass(frozen=True)
class SoapMessage:
    """A SOAP message as received: the envelope bytes and the MIME parts by Content-ID."""

    envelope: bytes
    parts: dict[str, Part]
    mtom: bool
    action: str  # the `action` media type parameter (SOAP 1.2 HTTP binding), '' when absent


def read_message(content_type: str, body: bytes) -> SoapMessage:
    """Plain SOAP 1.2 (`application/soap+xml`) or MTOM; anything else is a Fault."""
    media = MediaType.parse(content_type)
    if media.value == "application/soap+xml":
        _check_charset(media)
        return SoapMessage(body, {}, mtom=False, action=media.params.get("action", ""))
    if media.value != "multipart/related":
        raise Fault("", f"type de contenu {media.value or '(absent)'} non pris en charge", detail="HTTP_415")
    if media.params.get("type", "").lower() != "application/xop+xml":
        raise Fault("", 'MTOM : le paramètre type doit valoir "application/xop+xml"', detail="MTOM")
    if media.params.get("start-info", "").lower() != "application/soap+xml":
        raise Fault("", 'MTOM : start-info doit valoir "application/soap+xml"', detail="MTOM")
    boundary = media.params.get("boundary", "")
    if not _BOUNDARY.fullmatch(boundary):
        raise Fault("", "MTOM : boundary absent ou invalide (RFC 2046)", detail="MTOM")
    parts = _split(body, boundary)
    start = media.params.get("start", "")
    root_id = _cid(start) if start else next(iter(parts))
    root = parts.pop(root_id, None)
    if root is None:
        raise Fault("", f"MTOM : aucune partie ne porte le Content-ID de start {start!r}", detail="MTOM")
    if root.media_type.value != "application/xop+xml" or root.media_type.params.get("type") != "application/soap+xml":
        raise Fault("", 'MTOM : la partie racine doit être application/xop+xml; type="application/soap+xml"')
    _check_charset(root.media_type)
    return SoapMessage(root.data, parts, mtom=True, action=media.params.get("action", ""))


def include_target(href: str) -> str:
    """The Content-ID an `xop:Include href="cid:…"` names (RFC 2392: percent-encoded)."""
    if not href.startswith("cid:"):
        raise ValueError(f"xop:Include href {href!r} is not a cid: URL")
    return unquote(href[4:])


def write_message(envelope: bytes, attachments: tuple[tuple[str, str, bytes], ...], action: str) -> tuple[str, bytes]:
    """(Content-Type, body) of an MTOM answer, shaped like CXF's (root part first, binary parts)."""
    boundary = f"uuid:{uuid.uuid4()}"
    root_id = "root.message@cxf.apache.org"
    chunks = [
        f"--{boundary}\r\n".encode(),
        b'Content-Type: application/xop+xml; charset=UTF-8; type="application/soap+xml"\r\n',
        b"Content-Transfer-Encoding: binary\r\n",
        f"Content-ID: <{root_id}>\r\n\r\n".encode(),
        envelope,
    ]
    for content_id, media_type, data in attachments:
        head = f"\r\n--{boundary}\r\nContent-Type: {media_type}\r\nContent-Transfer-Encoding: binary\r\n"
        chunks += [head.encode(), f"Content-ID: <{content_id}>\r\n\r\n".encode(), data]
    chunks.append(f"\r\n--{boundary}--\r\n".encode())
    content_type = (
        f'multipart/related; type="application/xop+xml"; boundary="{boundary}"; start="<{root_id}>"; '
        f'start-info="application/soap+xml"; action="{action}"'
    )
    return content_type, b"".join(chunks)


def _split(body: bytes, boundary: str) -> dict[str, Part]:
    delimiter = b"--" + boundary.encode("ascii")
    if not body.startswith(delimiter + b"\r\n"):
        body_start = body.find(b"\r\n" + delimiter + b"\r\n")
        if body_start < 0:
            raise Fault("", "MTOM : premier délimiteur introuvable (lignes CRLF attendues)", detail="MTOM")
        body = body[body_start + 2 :]
    closing = b"\r\n" + delimiter + b"--"
    end = body.find(closing)
    if end < 0:
        raise Fault("", "MTOM : délimiteur de fin absent", detail="MTOM")
    chunks = body[len(delimiter) + 2 : end].split(b"\r\n" + delimiter + b"\r\n")
    parts: dict[str, Part] = {}
    for chunk in chunks:
        part = _part(chunk)
        if part.content_id in parts:
            raise Fault("", f"MTOM : Content-ID {part.content_id} en double", detail="MTOM")
        parts[part.content_id] = part
    return parts


def _part(chunk: bytes) -> Part:
    head, separator, data = chunk.partition(b"\r\n\r\n")
    if not separator:
        raise Fault("", "MTOM : partie sans ligne vide après les en-têtes", detail="MTOM")
    headers = Message()
    for line in head.decode("ascii", "replace").split("\r\n"):
        name, colon, value = line.partition(":")
        if not colon or not name.strip():
            raise Fault("", f"MTOM : en-tête de partie illisible {line[:60]!r}", detail="MTOM")
        headers[name.strip()] = value.strip()
    content_id = headers.get("Content-ID", "")
    if not content_id:
        raise Fault("", "MTOM : partie sans Content-ID", detail="MTOM")
    encoding = headers.get("Content-Transfer-Encoding", "binary").strip().lower()
    if encoding == "base64":
        try:
            data = base64.b64decode(re.sub(rb"\s+", b"", data), validate=True)
        except binascii.Error:
            raise Fault("", f"MTOM : base64 invalide dans la partie {content_id}", detail="MTOM") from None
    elif encoding not in ("binary", "8bit"):
        raise Fault("", f"MTOM : Content-Transfer-Encoding {encoding!r} non pris en charge", detail="MTOM")
    media = MediaType.parse(headers.get("Content-Type", "application/octet-stream"))
    return Part(_cid(content_id), media, data)


def _cid(value: str) -> str:
    value = value.strip()
    return value[1:-1] if value.startswith("<") and value.endswith(">") else value


def _check_charset(media: MediaType) -> None:
    charset = media.params.get("charset", "utf-8").lower()
    if charset not in ("utf-8", "utf8"):
        raise Fault("", f"jeu de caractères {charset} non pris en charge (UTF-8 attendu)")
