"""A syslog collector for tests and the demo: RFC 5425 over TLS, strict about what it receives.

It stands in for a site's ATNA audit repository. It listens on 127.0.0.1 (port 0 picks one, kept
across `stop()`/`start()` so a test can take the collector down and bring it back where the
exporter expects it), reads RFC 5425 frames, and refuses what a real collector would choke on: a
MSG-LEN that is not a positive decimal followed by one space, a header that is not RFC 5424
(PRI, VERSION 1, TIMESTAMP, HOSTNAME, APP-NAME, PROCID, MSGID, STRUCTURED-DATA) — the connection
is closed, as the stream cannot be resynchronised. Each MSG must be UTF-8 XML with the PS3.15 A.5
structure (AuditMessage, EventIdentification/EventID, an ActiveParticipant with a UserID,
AuditSourceIdentification/@AuditSourceID), and valid against an XML Schema when one is given;
what fails is listed in `problems()` rather than dropped, so a test sees it.
"""

from __future__ import annotations

import re
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from lxml import etree

BOM = b"\xef\xbb\xbf"
_PRINTABLE = rb"[\x21-\x7e]"
_TIMESTAMP = rb"-|\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d{1,6})?(?:Z|[+-]\d{2}:\d{2})"
_SD = rb"-|(?:\[[^\]]+\])+"
_HEADER = re.compile(
    rb"<(0|[1-9]\d{0,2})>1 (" + _TIMESTAMP + rb") (" + _PRINTABLE + rb"{1,255}) (" + _PRINTABLE + rb"{1,48}) ("
    + _PRINTABLE + rb"{1,128}) (" + _PRINTABLE + rb"{1,32}) (" + _SD + rb")(?: (.*))?\Z",
    re.DOTALL,
)  # fmt: skip
_MAX_LEN_DIGITS = 9


@dataclass(frozen=True)
class SyslogEntry:
    """One received message: its RFC 5424 header fields and MSG (without the BOM)."""

    pri: int
    timestamp: str
    hostname: str
    app_name: str
    procid: str
    msgid: str
    structured_data: str
    msg: bytes
    bom: bool
    client: str  # the client certificate's subject, or its address without one
    problems: tuple[str, ...] = ()

    @property
    def facility(self) -> int:
        return self.pri // 8

    @property
    def severity(self) -> int:
        return self.pri % 8

    def xml(self) -> etree._Element:
        return etree.fromstring(self.msg, _parser())


class FrameError(ValueError):
    """The byte stream is not RFC 5425 / RFC 5424: the collector hangs up."""


class SyslogCollector:
    """A TLS syslog listener in threads; `messages()` in arrival order, `problems()` what was wrong."""

    def __init__(self, certfile: Path, keyfile: Path, *, client_ca: Path | None = None, host: str = "127.0.0.1",
                 port: int = 0, schema: Path | None = None, max_message: int = 1 << 20) -> None:  # fmt: skip
        self.host, self.port, self.max_message = host, port, max_message
        self._context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self._context.minimum_version = ssl.TLSVersion.TLSv1_2
        self._context.load_cert_chain(str(certfile), str(keyfile))
        if client_ca is not None:
            self._context.verify_mode = ssl.CERT_REQUIRED
            self._context.load_verify_locations(str(client_ca))
        self._schema = etree.XMLSchema(etree.parse(str(schema))) if schema else None
        self._lock = threading.Lock()
        self._messages: list[SyslogEntry] = []
        self._problems: list[str] = []
        self._threads: list[threading.Thread] = []
        self._stop = threading.Event()
        self._listener: socket.socket | None = None
        self.connections = 0

    # -- lifecycle --------------------------------------------------------------------------------

    def start(self) -> SyslogCollector:
        """Listen (again) on `self.port`; the first start with port 0 picks one."""
        if self._listener is not None:
            return self
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((self.host, self.port))
        listener.listen(16)
        listener.settimeout(0.05)
        self.port = int(listener.getsockname()[1])
        self._stop = threading.Event()
        self._listener = listener
        self._spawn(self._accept_loop, listener, self._stop)
        return self

    def stop(self) -> None:
        """Close the listener and every connection (idempotent); what was received stays."""
        self._stop.set()
        with self._lock:
            threads, self._threads = self._threads, []
        for thread in threads:
            thread.join(10)
        self._listener = None

    def __enter__(self) -> SyslogCollector:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:  # fmt: skip
        self.stop()

    # -- what arrived -----------------------------------------------------------------------------

    def messages(self) -> list[SyslogEntry]:
        with self._lock:
            return list(self._messages)

    def problems(self) -> list[str]:
        """Every protocol or content violation seen, one line each."""
        with self._lock:
            found = [f"message {n}: {p}" for n, message in enumerate(self._messages) for p in message.problems]
            return self._problems + found

    def wait_for(self, count: int, timeout: float = 20.0) -> list[SyslogEntry]:
        """The messages once at least `count` arrived; TimeoutError (with what did) otherwise."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            received = self.messages()
            if len(received) >= count:
                return received
            time.sleep(0.01)
        raise TimeoutError(f"{len(self.messages())} of {count} syslog messages arrived; problems: {self.problems()}")

    # -- serving ----------------------------------------------------------------------------------

    def _spawn(self, target: object, *args: object) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)  # type: ignore[arg-type]
        with self._lock:
            self._threads.append(thread)
        thread.start()

    def _accept_loop(self, listener: socket.socket, stop: threading.Event) -> None:
        with listener:
            while not stop.is_set():
                try:
                    raw, address = listener.accept()
                except TimeoutError:
                    continue
                self._spawn(self._serve, raw, f"{address[0]}:{address[1]}", stop)

    def _serve(self, raw: socket.socket, address: str, stop: threading.Event) -> None:
        raw.settimeout(5)
        try:
            connection = self._context.wrap_socket(raw, server_side=True)
        except OSError as exc:
            raw.close()
            self._problem(f"{address}: TLS handshake failed: {exc}")
            return
        with self._lock:
            self.connections += 1
        client = _subject(connection) or address
        connection.settimeout(0.05)
        buffer = bytearray()
        with connection:
            while not stop.is_set():
                try:
                    chunk = connection.recv(65536)
                except TimeoutError:
                    continue
                except OSError as exc:
                    self._problem(f"{client}: connection broken: {exc}")
                    return
                if not chunk:
                    if buffer:
                        self._problem(f"{client}: connection closed inside a frame ({len(buffer)} bytes)")
                    return
                buffer += chunk
                try:
                    for message in self._frames(buffer):
                        self._receive(message, client)
                except FrameError as exc:
                    self._problem(f"{client}: {exc}; connection closed")
                    return

    def _frames(self, buffer: bytearray) -> Iterator[bytes]:
        """Take the complete frames off the front of `buffer` (RFC 5425 §4.3: MSG-LEN SP SYSLOG-MSG)."""
        while buffer:
            space = buffer.find(b" ", 0, _MAX_LEN_DIGITS + 1)
            digits = bytes(buffer[:space] if space >= 0 else buffer[: _MAX_LEN_DIGITS + 1])
            if not digits.isdigit() or digits.startswith(b"0"):
                raise FrameError(f"bad MSG-LEN {digits[:16]!r}")
            if space < 0:
                if len(digits) > _MAX_LEN_DIGITS:
                    raise FrameError(f"MSG-LEN longer than {_MAX_LEN_DIGITS} digits")
                break  # the length is still arriving
            length = int(digits)
            if length > self.max_message:
                raise FrameError(f"MSG-LEN {length} above the {self.max_message} bytes accepted")
            if len(buffer) < space + 1 + length:
                break
            message = bytes(buffer[space + 1 : space + 1 + length])
            del buffer[: space + 1 + length]
            yield message

    def _receive(self, message: bytes, client: str) -> None:
        match = _HEADER.match(message)
        if match is None:
            raise FrameError(f"not an RFC 5424 message: {message[:80]!r}")
        pri = int(match.group(1))
        if pri > 191:
            raise FrameError(f"PRI {pri} above 191")
        msg = match.group(8) or b""
        bom = msg.startswith(BOM)
        msg = msg[len(BOM) :] if bom else msg
        timestamp, hostname, app_name, procid, msgid, structured_data = (
            group.decode("ascii") for group in match.groups()[1:7]
        )
        entry = SyslogEntry(pri, timestamp, hostname, app_name, procid, msgid, structured_data, msg, bom, client,
                            tuple(self._check(msg)))  # fmt: skip
        with self._lock:
            self._messages.append(entry)

    def _check(self, msg: bytes) -> list[str]:
        """What is wrong with `msg` as a PS3.15 audit message (nothing: an empty list)."""
        try:
            msg.decode("utf-8")
            root = etree.fromstring(msg, _parser())
        except (UnicodeDecodeError, etree.XMLSyntaxError) as exc:
            return [f"MSG is not UTF-8 XML: {exc}"]
        problems = _structure(root)
        if self._schema is not None and not self._schema.validate(root):
            problems += [f"schema: line {error.line}: {error.message}" for error in self._schema.error_log]
        return problems

    def _problem(self, text: str) -> None:
        with self._lock:
            self._problems.append(text)


def _structure(root: etree._Element) -> list[str]:
    """The PS3.15 A.5.1 skeleton every audit message has."""
    problems = []
    if root.tag != "AuditMessage":
        problems.append(f"root is {root.tag!r}, not AuditMessage")
    event_id = root.find("EventIdentification/EventID")
    if event_id is None or not event_id.get("csd-code"):
        problems.append("no EventIdentification/EventID with a csd-code")
    if not [p for p in root.findall("ActiveParticipant") if p.get("UserID")]:
        problems.append("no ActiveParticipant with a UserID")
    source = root.find("AuditSourceIdentification")
    if source is None or not source.get("AuditSourceID"):
        problems.append("no AuditSourceIdentification with an AuditSourceID")
    return problems


def _parser() -> etree.XMLParser:
    """No DTD, no entity expansion, no network: what arrives is data, not instructions."""
    return etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False, huge_tree=False)


def _subject(connection: ssl.SSLSocket) -> str:
    certificate = connection.getpeercert()
    if not certificate:
        return ""
    subject: tuple[tuple[tuple[str, str], ...], ...] = certificate.get("subject", ())  # type: ignore[assignment]
    return ",".join(f"{key}={value}" for rdn in subject for key, value in rdn)
