"""Syslog over TLS for audit messages: RFC 5424 messages in RFC 5425 frames, as IHE ATNA sends them.

One message per audit record: PRI from facility 10 (security/authorization, "authpriv") with severity
notice for a success and warning for a failure, VERSION 1, the record's own time as TIMESTAMP (so
a re-sent record is byte-identical and a collector can drop the duplicate), MSGID "IHE+RFC-3881"
as ATNA asks, no structured data, and the UTF-8 XML after a BOM as MSG. Each message travels as
"MSG-LEN SP SYSLOG-MSG" (octet counting), on TLS 1.2 or newer with the collector's certificate
verified against our CA list and its name, and our client certificate when one is configured.

RFC 5425 has no acknowledgement. `SyslogConnection.send` therefore returns only once the
collector's TCP stack has acknowledged every byte (Linux TIOCOUTQ) and the collector has not
closed the connection: what it wrote is in the collector's hands, not in our socket buffer.
"""

from __future__ import annotations

import contextlib
import fcntl
import select
import socket
import ssl
import struct
import termios
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

FACILITY_AUTHPRIV = 10
SEVERITY_WARNING = 4
SEVERITY_NOTICE = 5
MSGID_ATNA = "IHE+RFC-3881"
NILVALUE = "-"
BOM = b"\xef\xbb\xbf"
_LIMITS = {"hostname": 255, "app_name": 48, "procid": 128, "msgid": 32}  # RFC 5424 §6.2


def syslog_message(msg: bytes, *, timestamp: datetime, hostname: str, app_name: str, success: bool,
                   procid: str = NILVALUE, msgid: str = MSGID_ATNA) -> bytes:  # fmt: skip
    """One RFC 5424 SYSLOG-MSG carrying `msg` (UTF-8, preceded by the BOM RFC 5424 asks for)."""
    pri = FACILITY_AUTHPRIV * 8 + (SEVERITY_NOTICE if success else SEVERITY_WARNING)
    header = " ".join((
        f"<{pri}>1", rfc3339(timestamp), _field(hostname, _LIMITS["hostname"]), _field(app_name, _LIMITS["app_name"]),
        _field(procid, _LIMITS["procid"]), _field(msgid, _LIMITS["msgid"]), NILVALUE,
    ))  # fmt: skip
    return header.encode("ascii") + b" " + BOM + msg


def rfc3339(moment: datetime) -> str:
    """RFC 5424 TIMESTAMP: UTC, at most six fractional digits."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def frame(message: bytes) -> bytes:
    """RFC 5425 §4.3 octet counting: MSG-LEN SP SYSLOG-MSG."""
    return b"%d " % len(message) + message


def _field(value: str, limit: int) -> str:
    """A header field as RFC 5424 allows it: printable US-ASCII without spaces, or "-" when empty."""
    kept = "".join(char if 33 <= ord(char) <= 126 else "_" for char in value.strip())[:limit]
    return kept or NILVALUE


def client_context(ca: Path | None, certificate: Path | None = None, key: Path | None = None) -> ssl.SSLContext:
    """TLS 1.2+ client context: the collector verified against `ca` (the system store when None)."""
    context = ssl.create_default_context(cafile=str(ca) if ca else None)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if certificate is not None:
        context.load_cert_chain(str(certificate), str(key) if key else None)
    return context


class SyslogConnection:
    """One TLS connection to the collector. Every failure is an OSError (ssl.SSLError included)."""

    def __init__(self, host: str, port: int, context: ssl.SSLContext, timeout: float = 10.0) -> None:
        self.host, self.port, self.timeout = host, port, timeout
        raw = socket.create_connection((host, port), timeout=timeout)
        try:
            self._socket = context.wrap_socket(raw, server_hostname=host)
        except BaseException:
            raw.close()
            raise

    def send(self, messages: Sequence[bytes]) -> None:
        """Write `messages` framed, then wait until the collector has them (see the module notes)."""
        self.check_open()
        self._socket.sendall(b"".join(frame(message) for message in messages))
        self._drain()
        self.check_open()

    def check_open(self) -> None:
        """Raise ConnectionError if the collector closed or reset the connection (a syslog
        collector never writes, so anything readable is its goodbye)."""
        readable, _, _ = select.select([self._socket], [], [], 0)
        if not readable and not self._socket.pending():
            return
        self._socket.setblocking(False)
        try:
            data = self._socket.recv(4096)
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError):
            return  # TLS housekeeping (a session ticket), no application data
        finally:
            self._socket.settimeout(self.timeout)
        if not data:
            raise ConnectionError(f"the collector {self.host}:{self.port} closed the connection")

    def _drain(self) -> None:
        """Wait until the kernel holds no unacknowledged byte for this socket (Linux); elsewhere
        sendall's return is all we know."""
        request = getattr(termios, "TIOCOUTQ", None)
        if request is None:
            return
        deadline = time.monotonic() + self.timeout
        while True:
            pending = struct.unpack("i", fcntl.ioctl(self._socket.fileno(), request, b"\0\0\0\0"))[0]
            if pending == 0:
                return
            if time.monotonic() >= deadline:
                raise TimeoutError(f"the collector {self.host}:{self.port} did not acknowledge {pending} bytes")
            time.sleep(0.005)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._socket.close()
