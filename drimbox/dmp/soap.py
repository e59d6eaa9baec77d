"""SOAP 1.2 envelopes with WS-Addressing and the VIHF, and MTOM/XOP packaging (DRIM-M §4.5).

ITI-41 goes as MTOM exactly like the DMP sample: root part `<0.1>` (application/xop+xml), the
KOS base64-encoded in `<0.2>`, the other documents binary. Responses may come either as plain
SOAP or as MTOM (the DMP answers ITI-41 that way); `soap_payload` gives the envelope in both cases.
"""

from __future__ import annotations

import base64
import binascii
import quopri
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from email.message import Message
from email.parser import BytesHeaderParser

from lxml import etree

SOAP = "http://www.w3.org/2003/05/soap-envelope"
WSA = "http://www.w3.org/2005/08/addressing"
WSSE = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd"
SOAP_MEDIA_TYPE = "application/soap+xml"
XOP_MEDIA_TYPE = "application/xop+xml"
ROOT_CONTENT_ID = "0.1"
#: Written by hand: lxml's own declaration uses single quotes, which some DMP-side parsers dislike.
XML_DECLARATION = b'<?xml version="1.0" encoding="UTF-8"?>\n'
_CRLF = b"\r\n"


@dataclass(frozen=True)
class Part:
    """One MTOM attachment: its Content-ID (without brackets), its bytes, whether to send it base64."""

    content_id: str
    data: bytes
    base64: bool = False


def envelope(action: str, to: str, assertion: etree._Element, body: etree._Element, message_id: str = "") -> bytes:
    """A SOAP 1.2 envelope: wsa:MessageID, wsa:To, wsa:Action (soap:mustUnderstand), the VIHF, `body`.

    The signed assertion is moved in as is; its exclusive-C14N signature survives the new context.
    """
    root = etree.Element(f"{{{SOAP}}}Envelope", nsmap={"soap": SOAP})
    header = etree.SubElement(root, f"{{{SOAP}}}Header")
    _addressing(header, "MessageID", message_id or f"urn:uuid:{uuid.uuid4()}")
    _addressing(header, "To", to)
    _addressing(header, "Action", action).set(f"{{{SOAP}}}mustUnderstand", "true")
    security = etree.SubElement(header, f"{{{WSSE}}}Security", nsmap={"wsse": WSSE})
    security.append(assertion)
    etree.SubElement(root, f"{{{SOAP}}}Body").append(body)
    return XML_DECLARATION + etree.tostring(root, encoding="UTF-8", xml_declaration=False)


def soap_content_type(action: str) -> str:
    """Plain SOAP 1.2 over HTTP (RFC 3902): the action travels as a media-type parameter."""
    return f'{SOAP_MEDIA_TYPE}; charset=UTF-8; action="{action}"'


def mtom_encode(soap: bytes, parts: Sequence[Part], action: str) -> tuple[str, bytes]:
    """The HTTP Content-Type and body of an MTOM/XOP request carrying `soap` and `parts`."""
    boundary = f"MIMEBoundary_{uuid.uuid4().hex}"
    while any(boundary.encode() in data for data in (soap, *(p.data for p in parts))):
        boundary = f"MIMEBoundary_{uuid.uuid4().hex}"  # pragma: no cover - 2**-122 odds
    delimiter = b"--" + boundary.encode()
    chunks = [
        delimiter,
        _headers(f'{XOP_MEDIA_TYPE}; charset=UTF-8; type="{SOAP_MEDIA_TYPE}"', "binary", ROOT_CONTENT_ID),
        soap,
    ]
    for part in parts:
        encoding = "base64" if part.base64 else "binary"
        data = base64.encodebytes(part.data).replace(b"\n", _CRLF).rstrip(_CRLF) if part.base64 else part.data
        chunks += [delimiter, _headers("application/octet-stream", encoding, part.content_id), data]
    chunks.append(delimiter + b"--")
    content_type = (
        f'multipart/related; boundary="{boundary}"; type="{XOP_MEDIA_TYPE}"; start="<{ROOT_CONTENT_ID}>"; '
        f'start-info="{SOAP_MEDIA_TYPE}"; action="{action}"'
    )
    return content_type, _CRLF.join(chunks) + _CRLF


def mtom_decode(content_type: str, body: bytes) -> tuple[bytes, dict[str, bytes]]:
    """The root part and the attachments (by Content-ID, without brackets) of a multipart/related body.

    Raises ValueError when the body is not the multipart the header announces.
    """
    header = _content_type(content_type)
    boundary = header.get_param("boundary")
    if not isinstance(boundary, str) or not boundary:
        raise ValueError("multipart/related without a boundary")
    start = header.get_param("start")
    parts: dict[str, bytes] = {}
    order: list[str] = []
    for index, (headers, content) in enumerate(_split(body, boundary.encode())):
        content_id = str(headers.get("Content-ID", f"part-{index}")).strip().strip("<>")
        parts[content_id] = _transfer_decode(str(headers.get("Content-Transfer-Encoding", "binary")), content)
        order.append(content_id)
    if not order:
        raise ValueError("multipart/related without parts")
    root_id = start.strip().strip("<>") if isinstance(start, str) and start.strip("<> ") in parts else order[0]
    root = parts.pop(root_id)
    return root, parts


def soap_payload(content_type: str, body: bytes) -> bytes:
    """The SOAP envelope of an answer, whether plain SOAP or MTOM (ValueError on a broken multipart)."""
    if _content_type(content_type).get_content_type() == "multipart/related":
        return mtom_decode(content_type, body)[0]
    return body


def _addressing(header: etree._Element, tag: str, text: str) -> etree._Element:
    node = etree.SubElement(header, f"{{{WSA}}}{tag}", nsmap={None: WSA})
    node.text = text
    return node


def _headers(content_type: str, encoding: str, content_id: str) -> bytes:
    lines = [f"Content-Type: {content_type}", f"Content-Transfer-Encoding: {encoding}", f"Content-ID: <{content_id}>"]
    return "\r\n".join(lines).encode() + _CRLF


def _content_type(value: str) -> Message:
    message = Message()
    message["Content-Type"] = value
    return message


def _split(body: bytes, boundary: bytes) -> list[tuple[Message, bytes]]:
    """RFC 2046 §5.1.1: a delimiter is `--boundary` at the start of a line (the line break before it
    belongs to the delimiter, not to the part), the close one `--boundary--`. LF-only bodies are read too."""
    chunks = re.split(rb"(?:\A|\r?\n)--" + re.escape(boundary), body)
    if len(chunks) < 3:
        raise ValueError("multipart body without its delimiters")
    result: list[tuple[Message, bytes]] = []
    for chunk in chunks[1:]:
        if chunk.startswith(b"--"):
            return result
        line_end = chunk.find(b"\n")
        if line_end < 0:
            raise ValueError("multipart delimiter line without end")
        chunk = chunk[line_end + 1 :]
        if chunk.startswith((_CRLF, b"\n")):  # a part without headers
            head, content = b"", chunk[2 if chunk.startswith(_CRLF) else 1 :]
        else:
            head, content = _part_head(chunk)
        result.append((BytesHeaderParser().parsebytes(head + b"\r\n\r\n"), content))
    raise ValueError("multipart body without its close delimiter")


def _part_head(chunk: bytes) -> tuple[bytes, bytes]:
    for separator in (b"\r\n\r\n", b"\n\n"):
        head, found, content = chunk.partition(separator)
        if found:
            return head, content
    raise ValueError("multipart part without a blank line after its headers")


def _transfer_decode(encoding: str, content: bytes) -> bytes:
    kind = encoding.strip().lower()
    if kind == "base64":
        try:
            return base64.b64decode(b"".join(content.split()), validate=True)
        except binascii.Error as exc:
            raise ValueError(f"invalid base64 part: {exc}") from exc
    if kind == "quoted-printable":
        return quopri.decodestring(content)
    return content
