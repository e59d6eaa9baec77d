"""The audit export: the trail's records, in order, to the site's syslog collector (ATNA).

The index database IS the spool. The exporter keeps no queue of its own: it reads the records
after its cursor (`audit_export` row of the sink), sends them as one batch, and moves the cursor
only once the collector has the whole batch (`SyslogConnection.send` returns after the collector's
TCP acknowledgement). When the collector is down, unreachable or hangs up, the exporter closes the
connection, waits `export_retry_seconds` and starts again from the cursor, so a collector down for
hours receives everything when it comes back, oldest first.

Delivery is at least once, not exactly once: a crash (or a broken connection) between the send
and the cursor update sends that batch again. A re-sent record is byte-identical (same XML, same
syslog header, the record's own time), so a collector can discard duplicates. A collector that
acknowledged bytes over TCP and then died before storing them loses them: RFC 5425 has no
application acknowledgement.
"""

from __future__ import annotations

import logging
import threading
from datetime import UTC, datetime

from sqlalchemy.exc import SQLAlchemyError

from drimbox.audit.atna import audit_message
from drimbox.audit.syslog import SyslogConnection, client_context, syslog_message
from drimbox.audit.trail import ChainedAuditTrail, StoredRecord
from drimbox.config import AuditSettings
from drimbox.errors import ConfigError

log = logging.getLogger(__name__)

SINK = "syslog"


class AuditExporter:
    """Sends the audit trail to `settings.syslog_host`; `run` until `stop` is set (a thread).

    `source_id` is the site's structure id, used as AuditSourceID unless `settings.source_id` names
    another; `hostname` is this machine's name in the syslog header and the messages.
    """

    def __init__(self, trail: ChainedAuditTrail, settings: AuditSettings, source_id: str, hostname: str, *,
                 sink: str = SINK, idle_seconds: float = 1.0, timeout: float = 10.0) -> None:  # fmt: skip
        if not settings.syslog_host:
            raise ConfigError("audit.syslog_host is empty: set the collector's host name to export the audit trail")
        if (settings.syslog_certificate is None) != (settings.syslog_key is None):
            raise ConfigError("audit.syslog_certificate and audit.syslog_key go together: set both or neither")
        try:
            self._context = client_context(settings.syslog_ca, settings.syslog_certificate, settings.syslog_key)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"audit.syslog_ca/syslog_certificate/syslog_key cannot be loaded: {exc}") from exc
        self.trail, self.settings, self.sink = trail, settings, sink
        self.source_id, self.hostname = settings.source_id or source_id, hostname
        self.idle_seconds, self.timeout = idle_seconds, timeout
        self._connection: SyslogConnection | None = None
        self._wake = threading.Event()
        self._last_error = ""
        self._last_error_at: datetime | None = None
        self._sent = 0
        self._failures = 0

    def run(self, stop: threading.Event) -> None:
        """Export until `stop` is set: every new record soon after it is written, and after a
        failure, everything since the cursor once the collector answers again."""
        log.info("audit export started", extra={"event": "audit.export.started", "host": self.settings.syslog_host,
                                                "port": self.settings.syslog_port})  # fmt: skip
        try:
            while not stop.is_set():
                try:
                    sent = self.export_pending(stop)
                except (OSError, SQLAlchemyError) as exc:
                    self._failed(exc)
                    stop.wait(self.settings.export_retry_seconds)
                    continue
                except Exception as exc:  # a bug must not end the export thread unseen: log, retry
                    log.exception("audit export error", extra={"event": "audit.export.error"})
                    self._failed(exc)
                    stop.wait(self.settings.export_retry_seconds)
                    continue
                if not sent:
                    self._wake.wait(self.idle_seconds)
                    self._wake.clear()
        finally:
            self.close()
            log.info("audit export stopped", extra={"event": "audit.export.stopped", "sent": self._sent})

    def notify(self) -> None:
        """A record was written (or `stop` was just set): look now rather than at the end of the
        idle wait."""
        self._wake.set()

    def export_pending(self, stop: threading.Event | None = None) -> int:
        """Send every record after the cursor, batch by batch; returns how many were sent.
        Raises OSError when the collector cannot take them (the cursor then stays put)."""
        total = 0
        while stop is None or not stop.is_set():
            cursor = self.trail.exported_up_to(self.sink)
            records = self.trail.records_after(cursor, self.settings.export_batch)
            if not records:
                break
            self._send(records)
            self.trail.mark_exported(self.sink, records[-1].seq)
            total += len(records)
            self._sent += len(records)
        return total

    def status(self) -> dict[str, object]:
        """For the status page: connected, cursor, backlog (records not yet at the collector), how many
        attempts failed since start and the last error."""
        head, _ = self.trail.head()
        exported = self.trail.exported_up_to(self.sink)
        return {
            "connected": self._connection is not None,
            "collector": f"{self.settings.syslog_host}:{self.settings.syslog_port}",
            "exported_up_to": exported,
            "head": head,
            "backlog": max(head - exported, 0),
            "sent": self._sent,
            "failures": self._failures,
            "last_error": self._last_error,
            "last_error_at": self._last_error_at.isoformat(timespec="seconds") if self._last_error_at else None,
        }

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def _send(self, records: list[StoredRecord]) -> None:
        messages = [self._message(record) for record in records]
        if self._connection is not None:
            try:
                self._connection.check_open()
            except OSError:  # closed while idle (a collector's idle timeout): reconnect now, nothing was lost
                self.close()
        if self._connection is None:
            self._connection = SyslogConnection(self.settings.syslog_host, self.settings.syslog_port, self._context,
                                                self.timeout)  # fmt: skip
            log.info("audit collector connected", extra={"event": "audit.export.connected",
                                                         "host": self.settings.syslog_host})  # fmt: skip
        self._connection.send(messages)

    def _message(self, record: StoredRecord) -> bytes:
        xml = audit_message(record, self.source_id, self.hostname)
        return syslog_message(xml, timestamp=record.recorded_at, hostname=self.hostname,
                              app_name=self.settings.syslog_app_name, success=record.outcome == "success")  # fmt: skip

    def _failed(self, exc: Exception) -> None:
        self.close()
        self._failures += 1
        self._last_error, self._last_error_at = f"{type(exc).__name__}: {exc}", datetime.now(UTC)
        retry = self.settings.export_retry_seconds
        extra = {"event": "audit.export.failed", "error": self._last_error, "retry_seconds": retry}
        log.warning("audit export interrupted", extra=extra)
