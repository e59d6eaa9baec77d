"""The MLLP listener the RIS sends reports to (DRIM-M §4.1: "MLLP recommandé").

An asyncio loop in a daemon thread accepts connections; each connection is a conversation of
frames answered in order. The inbox stores durably and may block on the database, so it runs
in a worker thread, and the ACK leaves only once it has returned: AA then means the report is
safe (volet: the box "a bien pris la responsabilité" of it). Nothing a client does stops the
listener: unreadable messages get AR/AE, inbox failures AE 207, protocol abuse a closed socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import threading
from concurrent.futures import ThreadPoolExecutor

from drimbox.config import Hl7Settings
from drimbox.hl7.ack import build_ack
from drimbox.hl7.framing import Frame, FrameDecoder, Oversize, frame
from drimbox.hl7.reading import MessageUnreadable, read_message
from drimbox.report.message import HL7_APPLICATION_INTERNAL_ERROR, Acceptance, ReportInbox, ReportMessage

log = logging.getLogger("drimbox.hl7")

_CHUNK = 64 * 1024
_START_TIMEOUT = 10.0


class MllpServer:
    """start() returns once the port listens (or raises OSError); stop() closes everything it opened.

    `accept_from` (when not empty) lists the client IPs let in; others are closed at once. At most
    `max_connections` are served together; one more is closed at once, logged.
    """

    def __init__(
        self, settings: Hl7Settings, inbox: ReportInbox, app_name: str = "DRIMBOX", facility: str = ""
    ) -> None:
        self.settings = settings
        self.inbox = inbox
        self.app_name = app_name
        self.facility = facility
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._address: tuple[str, int] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._open = 0
        self._allowed = {_normalised(ip) for ip in settings.accept_from}

    @property
    def address(self) -> tuple[str, int]:
        return self._address or (self.settings.bind, self.settings.port)

    def start(self) -> None:
        ready = threading.Event()
        failure: list[BaseException] = []
        self._executor = ThreadPoolExecutor(self.settings.max_connections, thread_name_prefix="hl7-inbox")
        self._thread = threading.Thread(target=self._run, args=(ready, failure), name="hl7-mllp", daemon=True)
        self._thread.start()
        if not ready.wait(_START_TIMEOUT):
            raise TimeoutError(f"HL7 listener on {self.settings.bind}:{self.settings.port} did not start")
        if failure:
            self._thread.join()
            self._executor.shutdown(wait=False)
            raise failure[0]
        log.info("HL7 listener started", extra={"event": "hl7.started", "bind": self.address[0],
                                                 "port": self.address[1]})  # fmt: skip

    def stop(self) -> None:
        loop, stopping, thread = self._loop, self._stopping, self._thread
        if loop is not None and stopping is not None and thread is not None and thread.is_alive():
            loop.call_soon_threadsafe(stopping.set)
            thread.join(_START_TIMEOUT)
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
        self._thread = self._loop = self._stopping = self._executor = None

    # --- the loop thread --------------------------------------------------------------------

    def _run(self, ready: threading.Event, failure: list[BaseException]) -> None:
        try:
            asyncio.run(self._main(ready, failure))
        except Exception as exc:  # the loop itself failed: record it for start() or the log
            failure.append(exc)
            log.exception("HL7 listener failed", extra={"event": "hl7.failed"})
        finally:
            ready.set()

    async def _main(self, ready: threading.Event, failure: list[BaseException]) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        try:
            server = await asyncio.start_server(self._connection, self.settings.bind, self.settings.port)
        except OSError as exc:
            failure.append(exc)
            return
        host, port = server.sockets[0].getsockname()[:2]
        self._address = (str(host), int(port))
        ready.set()
        async with server:
            await self._stopping.wait()
            server.close()
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        peer = _peer(writer)
        counted = False
        try:
            if self._allowed and _normalised(peer) not in self._allowed:
                log.warning("HL7 connection refused: address not in hl7.accept_from",
                            extra={"event": "hl7.refused_peer", "peer": peer})  # fmt: skip
                return
            if self._open >= self.settings.max_connections:
                log.warning("HL7 connection refused: hl7.max_connections reached",
                            extra={"event": "hl7.too_many", "peer": peer, "open": self._open})  # fmt: skip
                return
            self._open += 1
            counted = True
            await self._converse(reader, writer, peer)
        except (ConnectionError, TimeoutError) as exc:
            log.info("HL7 connection lost", extra={"event": "hl7.lost", "peer": peer, "reason": repr(exc)})
        except asyncio.CancelledError:
            raise
        except Exception:  # outermost handler of a connection: log, close, keep serving others
            log.exception("HL7 connection failed", extra={"event": "hl7.error", "peer": peer})
        finally:
            if counted:
                self._open -= 1
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            if task is not None:
                self._tasks.discard(task)

    async def _converse(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer: str) -> None:
        decoder = FrameDecoder(self.settings.max_message_bytes)
        warned = False
        while True:
            try:
                data = await asyncio.wait_for(reader.read(_CHUNK), self.settings.idle_timeout)
            except TimeoutError:
                log.info("idle HL7 connection closed", extra={"event": "hl7.idle", "peer": peer})
                return
            if not data:
                if decoder.pending:
                    log.warning("HL7 connection closed inside a frame: partial message dropped",
                                extra={"event": "hl7.truncated", "peer": peer})  # fmt: skip
                return
            for item in decoder.feed(data):
                if isinstance(item, Oversize):
                    await self._refuse_oversize(writer, item, peer)
                    return
                await self._send(writer, await self._answer(item, peer))
            if (decoder.discarded or decoder.restarted) and not warned:  # once per connection: no log flooding
                warned = True
                log.info("bytes outside MLLP frames ignored", extra={"event": "hl7.garbage", "peer": peer,
                         "discarded": decoder.discarded, "restarted": decoder.restarted})  # fmt: skip

    async def _answer(self, item: Frame, peer: str) -> bytes:
        """Read and hand to the inbox in worker threads (a large message takes a while to decode), then ACK."""
        raw = item.payload
        try:
            message = await asyncio.get_running_loop().run_in_executor(self._executor, read_message, raw)
        except MessageUnreadable as exc:
            acceptance = await self._refuse(raw, exc, peer)
            return build_ack(acceptance, None, raw, app_name=self.app_name, facility=self.facility)
        acceptance = await self._accept(message, peer)
        return build_ack(acceptance, message, raw, app_name=self.app_name, facility=self.facility)

    async def _accept(self, message: ReportMessage, peer: str) -> Acceptance:
        loop = asyncio.get_running_loop()
        try:
            acceptance = await loop.run_in_executor(self._executor, self.inbox.accept, message)
        except Exception:  # the inbox is outside this boundary: whatever it raises, answer and go on
            log.exception("report inbox failed", extra={"event": "hl7.inbox_error", "peer": peer,
                          "control_id": message.control_id})  # fmt: skip
            acceptance = _internal_error("")
        log.info("HL7 message acknowledged", extra={"event": "hl7.message", "peer": peer,
                 "control_id": message.control_id, "message_type": message.message_type,
                 "action": str(message.action), "ack": acceptance.code, "error_code": acceptance.error_code,
                 "bytes": len(message.raw)})  # fmt: skip
        return acceptance

    async def _refuse(self, raw: bytes, exc: MessageUnreadable, peer: str) -> Acceptance:
        """Record the unreadable message; if even that fails, AE 207 says so and quotes the reason."""
        refusal = exc.acceptance
        log.warning("HL7 message unreadable", extra={"event": "hl7.unreadable", "peer": peer,
                    "control_id": exc.control_id, "ack": refusal.code, "reason": refusal.text,
                    "error_code": refusal.error_code, "location": refusal.error_location})  # fmt: skip
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self._executor, self.inbox.refuse, raw, exc.control_id, refusal)
        except Exception:  # as in _accept
            log.exception("report inbox failed", extra={"event": "hl7.inbox_error", "peer": peer,
                          "control_id": exc.control_id})  # fmt: skip
            return _internal_error(f" (message refused: {refusal.text})")
        return refusal

    async def _refuse_oversize(self, writer: asyncio.StreamWriter, item: Oversize, peer: str) -> None:
        limit = self.settings.max_message_bytes
        log.warning("HL7 message too large: refused, connection closed",
                    extra={"event": "hl7.oversize", "peer": peer, "limit": limit})  # fmt: skip
        acceptance = Acceptance("AR", f"message larger than hl7.max_message_bytes ({limit} bytes)",
                                HL7_APPLICATION_INTERNAL_ERROR)  # fmt: skip
        await self._send(writer, build_ack(acceptance, None, item.head, app_name=self.app_name, facility=self.facility))

    async def _send(self, writer: asyncio.StreamWriter, ack: bytes) -> None:
        writer.write(frame(ack))
        await asyncio.wait_for(writer.drain(), self.settings.idle_timeout)


def _internal_error(detail: str) -> Acceptance:
    return Acceptance("AE", "application internal error" + detail, HL7_APPLICATION_INTERNAL_ERROR)


def _peer(writer: asyncio.StreamWriter) -> str:
    address = writer.get_extra_info("peername")
    return str(address[0]) if isinstance(address, tuple) and address else ""


def _normalised(ip: str) -> str:
    """IPv4-mapped IPv6 addresses (dual-stack sockets) compare as their IPv4 form."""
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return ip
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(address)
