"""`DmpSandbox`: a strict local stand-in for the DMP (IHE XDS.b registry and repository, plus the
DMP's patient and authorisation services) that the demo and the tests talk to over mutual TLS.

Strict means the DMP's refusals are reproduced, never waived: see `answers.py` for how a refusal
is worded (RegistryResponse Failure or SOAP Fault) and the module of each check for its rules
(`envelope.py`, `vihf.py`, `metadata.py`, `rules.py`, `xades.py`, `provide.py`, `query.py`,
`update.py`, `retrieve.py`, `patients.py`). Tests get controls a real DMP does not give:
`set_fault()` to make it down, overloaded, hanging or refusing for the next N requests,
`requests` counted per transaction, `entries()`, `add_patient()`, and `errors` (unexpected
exceptions, which should stay empty).
"""

from __future__ import annotations

import logging
import ssl
import threading
from collections import Counter
from collections.abc import Collection, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from types import TracebackType

from cryptography import x509

from drimbox.sandbox.dmp import patients
from drimbox.sandbox.dmp.answers import (
    Fault,
    Refusal,
    RegistryIssue,
    Reply,
    envelope,
    fault_envelope,
    query_response,
    registry_response,
    retrieve_response,
)
from drimbox.sandbox.dmp.context import Context, Rules
from drimbox.sandbox.dmp.ebxml import FAILURE
from drimbox.sandbox.dmp.envelope import RESPONSE_ACTIONS, Envelope, message_id_of, read_envelope
from drimbox.sandbox.dmp.mtom import SoapMessage, read_message
from drimbox.sandbox.dmp.provide import provide
from drimbox.sandbox.dmp.query import query
from drimbox.sandbox.dmp.retrieve import retrieve
from drimbox.sandbox.dmp.server import PREFIX, Listener
from drimbox.sandbox.dmp.store import Store, StoredEntry
from drimbox.sandbox.dmp.trust import Trust
from drimbox.sandbox.dmp.update import update
from drimbox.sandbox.dmp.vihf import Algorithms, check_vihf
from drimbox.sandbox.pki import PkiFiles

MODES = ("none", "down", "503", "hang", "refuse", "lose")
BUSY_PAGE = (
    b"<html><head><title>503 Service Unavailable</title></head><body><h1>Service Unavailable</h1></body></html>\n"
)
_log = logging.getLogger("drimbox.sandbox.dmp")


@dataclass(frozen=True)
class _Fault:
    mode: str = "none"
    remaining: int | None = None
    code: str = "XDSRegistryBusy"
    only: str | None = None


class DmpSandbox:
    """The sandbox DMP on `https://{host}:{port}/si-dmp-server/v2/services`, its SQLite file in `folder`.

    TLS material comes from `pki` (server certificate, CA bundle, CRLs) or the explicit paths.
    """

    def __init__(
        self,
        folder: Path,
        pki: PkiFiles | None = None,
        *,
        certfile: Path | None = None,
        keyfile: Path | None = None,
        cafile: Path | None = None,
        crlfiles: Sequence[Path] | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        ins_oids: Collection[str] | None = None,
        signature_algorithms: Collection[str] | None = None,
        digest_algorithms: Collection[str] | None = None,
        require_known_patients: bool = False,
        repository_uid: str | None = None,
    ) -> None:
        self.certfile = certfile or (pki.server_cert if pki else None)
        self.keyfile = keyfile or (pki.server_key if pki else None)
        self.cafile = cafile or (pki.ca_bundle if pki else None)
        if self.certfile is None or self.keyfile is None or self.cafile is None:
            raise ValueError("DmpSandbox needs a PKI or certfile, keyfile and cafile")
        self.crlfiles = tuple(crlfiles if crlfiles is not None else (pki.crls if pki else ()))
        self.folder, self.host, self.port = folder, host, port
        defaults, algorithms = Rules(), Algorithms()
        self.rules = replace(
            defaults,
            ins_oids=frozenset(ins_oids) if ins_oids is not None else defaults.ins_oids,
            algorithms=Algorithms(
                frozenset(signature_algorithms) if signature_algorithms is not None else algorithms.signature,
                frozenset(digest_algorithms) if digest_algorithms is not None else algorithms.digest,
            ),
            require_known_patients=require_known_patients,
            repository_uid=repository_uid or defaults.repository_uid,
        )
        self.trust = Trust(self.cafile, self.crlfiles)
        self.requests: Counter[str] = Counter()
        self.faults: Counter[str] = Counter()
        self.handshake_failures = 0
        self.errors: list[str] = []
        self._fault = _Fault()
        self._lock = threading.Lock()
        self._release = threading.Event()
        self._listener: Listener | None = None
        self._thread: threading.Thread | None = None
        self._store: Store | None = None
        self._tls: tuple[tuple[int, ...], ssl.SSLContext] | None = None

    # -- life cycle --------------------------------------------------------------------------------

    def start(self) -> DmpSandbox:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.tls_context()  # a bad certificate path fails here, not in the first connection
        listener = Listener((self.host, self.port), self)
        self.port = int(listener.server_address[1])
        self._listener = listener
        self._thread = threading.Thread(target=listener.serve_forever, name=f"sandbox-dmp-{self.port}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop listening, release hanging requests, close connections and the store (idempotent)."""
        listener, self._listener = self._listener, None
        self._release_hanging()
        if listener is not None:
            listener.shutdown()
            listener.server_close()
            listener.close_connections()
        if self._thread is not None:
            self._thread.join(timeout=5)
        with self._lock:
            store, self._store = self._store, None
        if store is not None:
            store.close()

    def __enter__(self) -> DmpSandbox:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        return f"https://{self.host}:{self.port}{PREFIX}"

    @property
    def store(self) -> Store:
        with self._lock:
            if self._store is None:
                self.folder.mkdir(parents=True, exist_ok=True)
                self._store = Store(self.folder / "dmp.sqlite")
            return self._store

    # -- test controls -----------------------------------------------------------------------------

    def entries(self) -> list[StoredEntry]:
        return self.store.entries()

    def add_patient(self, ins: str, authorised: bool = True) -> None:
        """Make a patient known (TD0.2 "patient existe"); `authorised` is the answer VALIDE/INTERDIT."""
        self.store.add_patient(ins, authorised)

    def set_fault(
        self, mode: str, *, times: int | None = None, code: str = "XDSRegistryBusy", only: str | None = None
    ) -> None:
        """Misbehave on the next `times` requests (all of them when None): "down" resets the TCP
        connection, "503" answers an HTML 503, "hang" never answers, "refuse" answers Failure with
        `code`, "lose" does the work and then never answers (a lost answer); "none" behaves.
        `only` limits it to one transaction ("ITI-41", "ITI-18"…)."""
        if mode not in MODES or (times is not None and times < 1) or (mode == "down" and only):
            raise ValueError(f"set_fault({mode!r}, times={times}, only={only}): unknown mode or bad limits")
        with self._lock:
            self._fault = _Fault(mode, times, code, only) if mode != "none" else _Fault()
            listener = self._listener
        self._release_hanging()
        if mode == "down" and listener is not None:
            listener.close_connections()  # a DMP that goes down drops the kept-alive connections too

    def _release_hanging(self) -> None:
        with self._lock:
            self._release.set()
            self._release = threading.Event()

    def _take(self, transaction: str | None) -> _Fault | None:
        with self._lock:
            fault = self._fault
            down = transaction is None
            if fault.mode == "none" or (fault.mode == "down") != down or (fault.only and fault.only != transaction):
                return None
            remaining = None if fault.remaining is None else fault.remaining - 1
            self._fault = _Fault() if remaining == 0 else replace(fault, remaining=remaining)
            self.faults[fault.mode] += 1
            return fault

    # -- Listener callbacks --------------------------------------------------------------------------

    def take_down(self) -> bool:
        return self._take(None) is not None

    def tls_context(self) -> ssl.SSLContext:
        """Rebuilt when a CRL file changes, so a revocation applies to the next handshake."""
        stamp = tuple(path.stat().st_mtime_ns for path in self.crlfiles)
        with self._lock:
            if self._tls is None or self._tls[0] != stamp:
                context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
                context.minimum_version = ssl.TLSVersion.TLSv1_2
                context.load_cert_chain(str(self.certfile), str(self.keyfile))
                context.verify_mode = ssl.CERT_REQUIRED
                context.load_verify_locations(cafile=str(self.cafile))
                for crl in self.crlfiles:
                    context.load_verify_locations(cafile=str(crl))
                if self.crlfiles:
                    context.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF
                self._tls = (stamp, context)
            return self._tls[1]

    def handshake_failed(self, exc: Exception) -> None:
        with self._lock:
            self.handshake_failures += 1
        _log.info("sandbox DMP refused a TLS handshake", extra={"reason": str(exc)})

    def answer(
        self, endpoint: str, content_type: str, body: bytes, peer: x509.Certificate, host: str
    ) -> tuple[str, Reply, bool] | None:
        message: SoapMessage | None = None
        try:
            message = read_message(content_type, body)
            urls = {f"{self.base_url}/{endpoint}", f"https://{host}{PREFIX}/{endpoint}"}
            read = read_envelope(message.envelope, endpoint, urls, message.action)
            checked: Envelope | Fault = read
            transaction = read.transaction
        except Fault as fault:
            checked, transaction = fault, "?"
        with self._lock:
            self.requests[transaction] += 1
            release = self._release
        mtom = endpoint == "repository" or (message is not None and message.mtom and endpoint == "registry")
        injected = self._take(transaction)
        if injected is not None and injected.mode == "hang":
            release.wait()
            return None
        if injected is not None and injected.mode == "503":
            return transaction, Reply(BUSY_PAGE, status=503), False
        if isinstance(checked, Fault):
            relates_to = message_id_of(message.envelope) if message is not None else ""
            return transaction, Reply(fault_envelope(checked, relates_to), 500), False
        assert message is not None
        if injected is not None and injected.mode == "refuse":
            issues = [RegistryIssue(injected.code, "refus simulé par le bac à sable (set_fault refuse)")]
            return transaction, self._refusal(transaction, Refusal(issues), checked.message_id), mtom
        outcome = self._process(checked, message, peer, mtom)
        if injected is not None and injected.mode == "lose":  # done, but the answer never leaves
            release.wait()
            return None
        return transaction, *outcome

    def _process(
        self, checked: Envelope, message: SoapMessage, peer: x509.Certificate, mtom: bool
    ) -> tuple[Reply, bool]:
        transaction, relates_to = checked.transaction, checked.message_id
        try:
            vihf = check_vihf(checked, self.trust, self.rules.algorithms, peer)
            context = Context(self.store, self.trust, self.rules, checked, message, vihf)
            reply = self._transaction(context)
        except Fault as fault:
            _log.info(
                "sandbox DMP fault", extra={"transaction": transaction, "fault": fault.subcode, "reason": fault.reason}
            )
            return Reply(fault_envelope(fault, relates_to), 500), False
        except Refusal as refusal:
            _log.info(
                "sandbox DMP refusal", extra={"transaction": transaction, "codes": [i.code for i in refusal.issues]}
            )
            return self._refusal(transaction, refusal, relates_to), mtom
        except Exception as exc:  # the outermost loop of a server: log, answer, carry on
            _log.exception("sandbox DMP bug")
            self.errors.append(f"{transaction}: {exc!r}")
            return Reply(
                fault_envelope(Fault("", f"erreur interne : {exc!r}", code="Receiver"), relates_to), 500
            ), False
        _log.info("sandbox DMP success", extra={"transaction": transaction})
        return reply, mtom

    def _transaction(self, context: Context) -> Reply:
        transaction, relates_to = context.envelope.transaction, context.envelope.message_id
        action = RESPONSE_ACTIONS[transaction]
        if transaction == "ITI-41":
            provide(context)
            return Reply(envelope(action, relates_to, registry_response()))
        if transaction == "ITI-57":
            update(context)
            return Reply(envelope(action, relates_to, registry_response()))
        if transaction == "ITI-18":
            objects, _ = query(context)
            return Reply(envelope(action, relates_to, query_response(objects)))
        if transaction == "ITI-43":
            status, found, issues = retrieve(context)
            parts = [(f"doc{index}@sandbox-dmp", mime, data) for index, (_, _, mime, data) in enumerate(found)]
            listed = [(repo, uid, mime, parts[index][0]) for index, (repo, uid, mime, _) in enumerate(found)]
            body = retrieve_response(status, listed, issues)
            return Reply(envelope(action, relates_to, body), attachments=tuple(parts))
        if transaction == "TD0.2":
            return Reply(envelope(action, relates_to, patients.existence(context)))
        return Reply(envelope(action, relates_to, patients.set_authorization(context)))

    def _refusal(self, transaction: str, refusal: Refusal, relates_to: str) -> Reply:
        if transaction == "ITI-18":
            body = query_response([], refusal.issues)
        elif transaction == "ITI-43":
            body = retrieve_response(FAILURE, [], refusal.issues)
        elif transaction in ("ITI-41", "ITI-57"):
            body = registry_response(refusal.issues)
        else:
            issue = refusal.issues[0]
            fault = Fault("", issue.context, code="Receiver", detail=issue.code)
            return Reply(fault_envelope(fault, relates_to), 500)
        return Reply(envelope(RESPONSE_ACTIONS[transaction], relates_to, body))
