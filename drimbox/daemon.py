"""The composition root: builds the core, hands ports to the boundaries, starts the servers.

`build_node()` is also what the CLI's one-shot commands (`index`, `retrieve`, `echo`) use, so
they run exactly the code the daemon runs.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import date, datetime, timedelta
from typing import Any

import uvicorn
from fastapi import FastAPI, Request

from drimbox import __version__
from drimbox.audit.export import AuditExporter
from drimbox.audit.statistics import last_day_counters
from drimbox.audit.trail import ChainedAuditTrail
from drimbox.auth.factory import make_verifier
from drimbox.bearer import bearer_token
from drimbox.config import Settings, private_key_problems
from drimbox.dicomweb import problems
from drimbox.dicomweb.audit import AccessAudit
from drimbox.dicomweb.fetching import RetrievalHub
from drimbox.dicomweb.frames import PixelTranscoder, frames_router
from drimbox.dicomweb.guard import kos_guard
from drimbox.dicomweb.problems import Problem
from drimbox.dicomweb.qido import qido_router
from drimbox.dicomweb.wado import Wado, wado_router
from drimbox.dimse.admissions import AdmissionProcess
from drimbox.dimse.connection import PeerConnector
from drimbox.dimse.indexer import IndexReport, PacsIndexer, Progress
from drimbox.dimse.parallel import WorkerPool
from drimbox.dimse.retrieve import Retriever
from drimbox.dimse.scp import StoreServer
from drimbox.dimse.storage import StorageHandler
from drimbox.errors import ConfigError, DrimboxError, TokenRejected, VerifierUnavailable
from drimbox.httpd import zerocopy
from drimbox.httpd.hardening import Hardening
from drimbox.index import db
from drimbox.index.repository import IndexRepository
from drimbox.logs import configure_logging
from drimbox.mtls.server import MutualTlsServer
from drimbox.peer import peer_name
from drimbox.ports import AuditEvent, AuditTrail, Principal, TokenVerifier
from drimbox.publish.outbox import Outbox
from drimbox.publish.submission import DmpGateway
from drimbox.publishing import build_publishing
from drimbox.status.audit import audit_router
from drimbox.status.publications import publications_router
from drimbox.status.routes import status_router
from drimbox.store.cache import StoreCache
from drimbox.store.files import InstanceStore
from drimbox.store.intake import InstanceIntake
from drimbox.whitelist.keeper import WhitelistKeeper

log = logging.getLogger(__name__)


@dataclass
class PeerHealth:
    """The last C-ECHO result for one peer."""

    reachable: bool | None = None
    checked_at: str = ""
    latency_ms: float | None = None
    detail: str = ""


@dataclass
class Node:
    """Every long-lived object of one drimbox, wired together."""

    settings: Settings
    index: IndexRepository
    store: InstanceStore
    connector: PeerConnector
    storage: StorageHandler
    scp: StoreServer
    retriever: Retriever
    indexer: PacsIndexer
    audit: ChainedAuditTrail
    wado: Wado
    outbox: Outbox
    started: float = field(default_factory=time.time)
    peer_health: dict[str, PeerHealth] = field(default_factory=dict)
    last_indexing: dict[str, Any] = field(default_factory=dict)
    _activity_cache: tuple[float, dict[str, int]] | None = None
    extra_status: dict[str, Callable[[], dict[str, object]]] = field(default_factory=dict)
    closers: list[Callable[[], None]] = field(default_factory=list)

    def close(self) -> None:
        """Stop the DICOM listener and any retrieval worker; close what the HTTP app opened
        (the token verifier's HTTP client); release the database."""
        self.scp.stop()
        self.retriever.close()
        for close in self.closers:
            close()
        self.index.engine.dispose()

    def echo(self, peer: str) -> PeerHealth:
        """C-ECHO `peer` and remember the outcome for the status page."""
        self.settings.peer(peer)
        began = time.monotonic()
        try:
            status = self.connector.echo(peer)
            health = PeerHealth(
                status == 0x0000,
                _now(),
                round((time.monotonic() - began) * 1000, 1),
                f"status 0x{status:04X}",
            )
        except DrimboxError as exc:
            health = PeerHealth(False, _now(), None, str(exc))
        self.peer_health[peer] = health
        return health

    def index_peer(
        self,
        peer: str,
        since: date | None = None,
        until: date | None = None,
        *,
        full: bool = False,
        progress: Progress | None = None,
    ) -> IndexReport:
        """Index one peer: the configured window by default, everything when `full`."""
        self.settings.peer(peer)
        if not full and since is None:
            since = date.today() - timedelta(days=self.settings.index.window_days)
        report = self.indexer.run(peer, since, until, full=full, progress=progress)
        self.last_indexing = {
            "peer": peer, "finished_at": _now(), "full": full,
            "studies_seen": report.studies_seen, "studies_new": report.studies_new,
            "studies_changed": report.studies_changed, "studies_removed": report.studies_removed,
        }  # fmt: skip
        return report

    def snapshot(self) -> dict[str, Any]:
        """The status page's content: no patient data."""
        counts = self.index.counts()
        return {
            "version": __version__,
            "mode": self.settings.mode,
            "site": self.settings.site.name,
            "ae_title": self.settings.dimse.ae_title,
            "uptime_seconds": int(time.time() - self.started),
            "peers": [
                {
                    "name": name,
                    "ae_title": peer.ae_title,
                    "host": peer.host,
                    "port": peer.port,
                    "retrieve": peer.retrieve,
                    **asdict(self.peer_health.get(name, PeerHealth())),
                }
                for name, peer in self.settings.pacs.items()
            ],
            "index": asdict(counts),
            "last_indexing": self.last_indexing,
            "publications": self.outbox.counts(),
            "last_24h": self._activity(),
            **{name: status() for name, status in self.extra_status.items()},
        }

    def _activity(self) -> dict[str, int]:
        """The last 24 hours from the audit trail, recomputed at most once a minute."""
        now = time.monotonic()
        if self._activity_cache is None or now - self._activity_cache[0] > 60:
            self._activity_cache = (now, last_day_counters(self.audit))
        return self._activity_cache[1]


@dataclass(frozen=True)
class _Core:
    """What the daemon and each retrieval worker process share: index, store, audit, DIMSE client."""

    index: IndexRepository
    store: InstanceStore
    audit: ChainedAuditTrail
    storage: StorageHandler
    connector: PeerConnector

    @classmethod
    def open(cls, settings: Settings) -> _Core:
        index = IndexRepository(db.make_engine(settings.database_url))
        store = InstanceStore(settings.store.folder, settings.store.fsync)
        audit = ChainedAuditTrail(index.engine)
        storage = StorageHandler(InstanceIntake(store, index, audit, public_prefix(settings)))
        return cls(index, store, audit, storage, PeerConnector(settings.dimse, dict(settings.pacs)))


def build_node(settings: Settings, *, retrieval_processes: bool = True) -> Node:
    """Open the index (migrating it when allowed), the store and the DIMSE parts.

    `retrieval_processes=False` (the HTTP worker processes of `dicomweb.workers > 1`): no pool of
    C-GET worker processes, each retrieval uses one association in the process itself. The HTTP
    workers are already several processes; a pool in each multiplied the C-GET processes (with
    2 HTTP workers, a CT fetched on demand had grown the box by ~900 MB of worker processes).
    """
    core = _Core.open(settings)
    engine = core.index.engine
    if settings.database.auto_upgrade:
        db.upgrade(engine)
    elif db.current_revision(engine) != db.head_revision():
        raise DrimboxError("the index database is not up to date: run `drimbox db upgrade`")
    scp = StoreServer(settings.dimse, core.storage, dict(settings.pacs), core.audit)
    processes = max((peer.retrieve_processes for peer in settings.pacs.values()), default=1)
    pool = WorkerPool(settings, build_worker_retriever, processes) if processes > 1 and retrieval_processes else None
    admission = AdmissionProcess(settings, build_worker_retriever) if retrieval_processes else None
    retriever = Retriever(settings, core.connector, core.storage, core.index, core.audit, scp, pool, admission)
    indexer = PacsIndexer(core.connector, core.index, core.store, core.audit)
    cache = StoreCache(core.index, core.store, settings.store.max_bytes)
    hub = RetrievalHub(retriever, after=cache.evict, stall_seconds=settings.dimse.idle_timeout * 2)
    transcoder = PixelTranscoder(core.store.incoming)
    wado = Wado(core.index, hub, public_prefix(settings), transcoder, cache, core.store.incoming,
                settings.dicomweb.transcode == "client-preference")  # fmt: skip
    outbox = Outbox(engine, settings.dmp.uid_root)
    node = Node(
        settings,
        core.index,
        core.store,
        core.connector,
        core.storage,
        scp,
        retriever,
        indexer,
        core.audit,
        wado,
        outbox,
    )
    node.extra_status["retrieval_processes"] = retriever.processes_status
    return node


def public_prefix(settings: Settings) -> str:
    """The absolute URL of our DICOMweb service, from configuration only (never a Host header)."""
    return settings.http.public_base_url + settings.dicomweb.prefix


def build_worker_retriever(settings: Settings) -> Retriever:
    """What a retrieval worker process runs: the same store, index and audit trail, no listener."""
    core = _Core.open(settings)
    retriever = Retriever(settings, core.connector, core.storage, core.index, core.audit)
    settle()
    return retriever


def settle() -> None:
    """Keep what start-up made (modules, the node: ~160,000 objects, alive until the process ends)
    out of the garbage collector's full passes, which walked all of it every few thousand
    allocations: ~15 % of the CPU an admission process spent on a CT retrieval. Called once by
    the processes that live on (`drimbox serve`, its worker processes, `drimbox retrieve`), not
    by `build_node` (a process that builds many nodes, as the tests do, would keep them all)."""
    gc.collect()
    gc.freeze()


def build_app(node: Node, verifier: TokenVerifier | None = None) -> FastAPI:
    """The HTTP application: status pages, and DICOMweb behind bearer token + KOS checks."""
    settings = node.settings
    zerocopy.install()  # instances leave by sendfile(2) when uvicorn's h11 protocol serves this app
    app = FastAPI(title="drimbox", version=__version__, docs_url=None, redoc_url=None, openapi_url=None)
    problems.install(app)
    app.include_router(status_router(node.snapshot))
    if verifier is None:
        verifier = made = make_verifier(settings.auth)
        node.closers.append(made.close)
    health = getattr(verifier, "health", None)
    if callable(health):
        node.extra_status["token_verifier"] = health
    authorize = kos_guard(verifier, node.index.kos_access, settings.auth.kos_mismatch_status)
    app.include_router(wado_router(node.wado, authorize), prefix=settings.dicomweb.prefix)
    app.include_router(frames_router(node.wado, authorize), prefix=settings.dicomweb.prefix)
    qido = qido_router(lambda: node.index, default_limit=settings.dicomweb.default_limit,
                       max_limit=settings.dicomweb.max_limit, authorize=authorize,
                       public_prefix=public_prefix(settings))  # fmt: skip
    app.include_router(qido, prefix=settings.dicomweb.prefix)
    operators = frozenset(settings.auth.operators) if settings.auth.operators or settings.mode == "production" else None
    operator = _authenticated(verifier, node.audit, operators)
    app.include_router(publications_router(lambda: node.outbox, operator))
    app.include_router(audit_router(node.audit, node.audit, operator))
    app.add_middleware(AccessAudit, audit=node.audit, prefix=settings.dicomweb.prefix)
    https = settings.http.tls.certificate is not None or settings.http.public_base_url.startswith("https://")
    app.add_middleware(Hardening, limits=settings.limits, https=https)  # outermost: before anything else runs
    return app


def _authenticated(verifier: TokenVerifier, audit: AuditTrail,
                   operators: frozenset[str] | None) -> Callable[[Request], Principal]:  # fmt: skip
    """The dependency of operator routes: a valid bearer token (else 401, 503 when PSC is down) of
    a professional listed in `auth.operators` (else 403; `None`: any, in demo mode only).

    Each refusal is an audit record (`auth.refused`); each page an operator opens is one too
    (`admin.viewed`), as those pages show patient identifiers.
    """

    def refuse(request: Request, actor: str, reason: str) -> None:
        audit.record(AuditEvent("auth.refused", actor, "failure", peer=peer_name(request.scope),
                                detail={"path": request.url.path[:512], "reason": reason}))  # fmt: skip

    def authenticate(request: Request) -> Principal:
        try:
            principal = verifier.verify(bearer_token(request.headers.get("authorization")))
        except (TokenRejected, VerifierUnavailable) as exc:
            refuse(request, "unauthenticated", str(exc))
            raise
        if operators is not None and principal.subject not in operators:
            refuse(request, principal.subject, "not an operator of this box (auth.operators)")
            raise Problem(403, "this page is for the box's operators: ask to be added to auth.operators")
        audit.record(AuditEvent("admin.viewed", principal.subject, peer=peer_name(request.scope),
                                detail={"path": request.url.path[:512]}))  # fmt: skip
        return principal

    return authenticate


class Daemon:
    """`drimbox serve`: the DICOM listener, the HTTP server and the periodic work."""

    def __init__(self, settings: Settings, index_at_start: bool = True, gateway: DmpGateway | None = None) -> None:
        problems = private_key_problems(settings)
        if problems and settings.mode == "production":
            raise ConfigError("private keys must be readable by the service user only: " + "; ".join(problems))
        self.settings = settings
        self.index_at_start = index_at_start
        self.node = build_node(settings)
        node = self.node
        self.publishing = build_publishing(
            settings, node.outbox, node.index, node.connector, node.storage, node.audit, gateway
        )
        self.whitelist = WhitelistKeeper(settings.whitelist, settings.store.folder / "whitelist", node.audit)
        self.tls = MutualTlsServer(settings.http.tls, node.audit, self.whitelist.current)
        self.exporter: AuditExporter | None = None
        if settings.audit.syslog_host:
            self.exporter = AuditExporter(node.audit, settings.audit, settings.site.structure_id, socket.gethostname())
        self.app = build_app(self.node)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.server: uvicorn.Server | None = None

    def start_background(self) -> None:
        """Start the DICOM listener, the publication chain and the periodic threads (once)."""
        if self._threads:
            return
        removed = self.node.store.clean_incoming()
        if removed:
            log.info("removed interrupted transfers", extra={"event": "store.cleaned", "files": removed})
        if self.settings.whitelist.url or self.settings.whitelist.initial_file:
            self.whitelist.load()
        if self.settings.whitelist.url:
            self._spawn("whitelist", lambda: self.whitelist.run(self._stop))
        self.node.extra_status["whitelist"] = self.whitelist.status
        if self.exporter is not None:
            exporter = self.exporter
            self._spawn("audit-export", lambda: exporter.run(self._stop))
            self.node.extra_status["audit_export"] = exporter.status
        _audit_configuration(self.settings, self.node.audit)
        self.node.audit.record(
            AuditEvent("daemon.started", "system", detail={"version": __version__, "mode": self.settings.mode})
        )
        self.node.scp.start()
        self.publishing.start()
        self._spawn("peer-echo", self._echo_loop)
        if self.settings.index.interval_minutes > 0:
            self._spawn("indexing", self._index_loop)

    def run(self) -> None:
        """Serve until SIGINT/SIGTERM, then stop everything."""
        settle()
        self.start_background()
        if self.settings.dicomweb.workers > 1:
            self._run_workers()
            return
        self.server = self.tls.server(self.app, **http_options(self.settings))
        try:
            self.server.run()
        finally:
            self.tls.close()
            self.stop()

    def _run_workers(self) -> None:
        """HTTP in `dicomweb.workers` processes (each with its own index connection and fetch hub);
        the DICOM listener and the periodic work stay in this one."""
        os.environ[_WORKER_SETTINGS] = self.settings.model_dump_json()
        try:
            uvicorn.run(f"{__name__}:worker_app", factory=True, workers=self.settings.dicomweb.workers, http="h11",
                        **http_options(self.settings), **_server_tls_options(self.settings))  # fmt: skip
        finally:
            self.stop()

    def stop(self) -> None:
        if not self._stop.is_set() and self._threads:
            try:
                self.node.audit.record(AuditEvent("daemon.stopped", "system"))
            except Exception:
                log.exception("audit record failed", extra={"event": "audit.error"})
        self._stop.set()
        if self.exporter is not None:
            self.exporter.notify()
        self.publishing.stop()
        self.node.close()
        for thread in self._threads:
            thread.join(timeout=5)
        log.info("stopped", extra={"event": "daemon.stopped"})

    def _spawn(self, name: str, target: Any) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def _echo_loop(self) -> None:
        """Peer reachability for the status page, and the sweep of abandoned transfers."""
        while not self._stop.is_set():
            for peer in self.settings.pacs:
                try:
                    self.node.echo(peer)
                except Exception:
                    log.exception("C-ECHO crashed", extra={"event": "echo.crashed", "peer": peer})
                    self.node.peer_health[peer] = PeerHealth(False, _now(), None, "C-ECHO failed unexpectedly")
            self.node.store.clean_incoming(older_than=self.settings.dimse.idle_timeout * 2)
            self._stop_idle_processes()
            try:
                self.node.wado.cache.evict()
            except Exception:
                log.exception("eviction failed", extra={"event": "store.evict_failed"})
            self._stop.wait(self.settings.index.echo_interval_seconds)

    def _stop_idle_processes(self) -> None:
        idle_minutes = self.settings.dimse.retrieval_processes_idle_minutes
        if not idle_minutes:
            return
        try:
            stopped = self.node.retriever.stop_idle_processes(idle_minutes * 60)
        except Exception:
            log.exception("stopping idle processes failed", extra={"event": "retrieve.idle_stop_failed"})
            return
        if stopped:
            log.info("idle processes stopped", extra={"event": "retrieve.idle_stopped", "stopped": ", ".join(stopped)})

    def _index_loop(self) -> None:
        last_full: date | None = None
        if not self.index_at_start:
            self._stop.wait(self.settings.index.interval_minutes * 60)
        while not self._stop.is_set():
            full = last_full != date.today() and datetime.now().hour == self.settings.index.full_at_hour
            for peer in self.settings.pacs:
                try:
                    self.node.index_peer(peer, full=full)
                except DrimboxError as exc:
                    log.warning("indexing failed", extra={"event": "index.failed", "peer": peer, "reason": str(exc)})
                except Exception:
                    log.exception("indexing crashed", extra={"event": "index.crashed", "peer": peer})
            if full:
                last_full = date.today()
            self._stop.wait(self.settings.index.interval_minutes * 60)


_WORKER_SETTINGS = "DRIMBOX_WORKER_SETTINGS_JSON"


def worker_app() -> FastAPI:
    """What each HTTP worker process serves (uvicorn imports it by name)."""
    settings = Settings.model_validate_json(os.environ[_WORKER_SETTINGS])
    configure_logging(settings.log_level)
    app = build_app(build_node(settings, retrieval_processes=False))
    settle()
    return app


def http_options(settings: Settings) -> dict[str, Any]:
    """uvicorn's options from our settings: address, limits. TLS is `MutualTlsServer`'s job (it
    does the handshake itself so that every refused peer reaches the audit trail).

    Forwarded headers are ignored (`proxy_headers=False`): nothing we build depends on them.
    """
    options: dict[str, Any] = {
        "host": settings.http.bind,
        "port": settings.http.port,
        "log_config": None,
        "access_log": False,
        "proxy_headers": False,
        "server_header": False,
        "h11_max_incomplete_event_size": settings.limits.max_header_bytes * 2,
    }
    return options


def _server_tls_options(settings: Settings) -> dict[str, Any]:
    """uvicorn's own TLS, for the multi-process mode only (no mutual TLS there: see config)."""
    tls = settings.http.tls
    if tls.certificate is None:
        return {}
    return {"ssl_certfile": str(tls.certificate), "ssl_keyfile": str(tls.key)}


_SECRET_NAMES = ("password", "secret")


def _audit_configuration(settings: Settings, audit: AuditTrail) -> None:
    """Record which settings changed since the last start (`config.changed`), never their secret
    values: the previous start's settings are kept, secrets masked, in the data folder."""
    current = {key: ("***" if any(name in key for name in _SECRET_NAMES) and value else value)
               for key, value in _flatten(settings.model_dump(mode="json")).items()}  # fmt: skip
    kept = settings.store.folder / "last-configuration.json"
    try:
        previous = json.loads(kept.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        previous = None
    if previous == current:
        return
    known = previous if isinstance(previous, dict) else {}
    changed = sorted(key for key in set(current) | set(known) if current.get(key) != known.get(key))
    audit.record(AuditEvent("config.changed", "system", detail={"first_start": previous is None,
                                                                "keys": changed[:200]}))  # fmt: skip
    kept.parent.mkdir(parents=True, exist_ok=True)
    kept.write_text(json.dumps(current, indent=1, sort_keys=True), encoding="utf-8")
    kept.chmod(0o600)


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        flat: dict[str, Any] = {}
        for key, inner in value.items():
            flat |= _flatten(inner, f"{prefix}{key}.")
        return flat
    return {prefix.rstrip("."): value}


def _now() -> str:
    return datetime.now().astimezone().isoformat(timespec="seconds")
