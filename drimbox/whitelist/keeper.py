"""Keeping the ANS whitelist in force: download daily, verify, refuse without losing the old one.

The list decides which remote boxes may talk to us (A9), so two failure modes matter: letting a
forged or outdated list in, and being left with no list. A refused or failed download therefore
never replaces the list in force; a list older than the one in force is a rollback and refused;
the list in force survives restarts in `folder/whitelist.xml` (written atomically) and is
re-verified when loaded. Every attempt lands in the audit trail, and a list nobody confirmed for
`max_age_hours` is reported stale (logged at each cycle, shown by `status()`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

import httpx
from cryptography import x509

from drimbox.config import WhitelistSettings
from drimbox.errors import ConfigError, WhitelistRefused
from drimbox.ports import AuditEvent, AuditTrail
from drimbox.whitelist.model import Whitelist
from drimbox.whitelist.signature import verify_whitelist

log = logging.getLogger(__name__)

LIST_FILE = "whitelist.xml"
STATE_FILE = "whitelist-state.json"
MAX_BYTES = 16 * 1024 * 1024  # the real list is ~20 KB; anything near this is not a whitelist
_LOOPBACK = {"127.0.0.1", "localhost", "::1"}

Outcome = Literal["accepted", "unchanged", "refused", "download_failed", "skipped"]


@dataclass(frozen=True)
class RefreshResult:
    """What one refresh did. `whitelist` is the list in force afterwards (maybe the old one)."""

    outcome: Outcome
    reason: str = ""
    whitelist: Whitelist | None = None

    @property
    def ok(self) -> bool:
        return self.outcome in ("accepted", "unchanged")


def _utcnow() -> datetime:
    return datetime.now(UTC)


class WhitelistKeeper:
    """The list in force, its kept copy and its refresh loop (one per node)."""

    def __init__(
        self,
        settings: WhitelistSettings,
        folder: Path,
        audit: AuditTrail,
        *,
        fetch: Callable[[], bytes] | None = None,
        clock: Callable[[], datetime] = _utcnow,
    ) -> None:
        if settings.url:
            _check_url(settings.url)
        if (settings.url or settings.initial_file or fetch) and settings.trust_anchors is None:
            raise ConfigError("whitelist.trust_anchors is required to verify the whitelist (PEM of the IGC-Santé root)")
        self._settings = settings
        self._folder = folder
        self._audit = audit
        self._clock = clock
        self._fetch = fetch if fetch is not None else (self._download if settings.url else None)
        self._anchors = _read_certificates(settings.trust_anchors) if settings.trust_anchors else []
        self._refreshing = threading.Lock()
        self._current: Whitelist | None = None
        self._state: dict[str, str | None] = _read_state(folder / STATE_FILE)

    # -- what the rest of the box calls -----------------------------------------------------------

    def current(self) -> Whitelist | None:
        """The list in force (None: none verified yet, every remote box is refused). Lock-free."""
        return self._current

    def load(self) -> Whitelist | None:
        """At start: the kept list (re-verified) or `initial_file`, whichever verifies and is newer."""
        candidates: list[tuple[str, bytes, Whitelist]] = []
        for source, path in (("kept", self._folder / LIST_FILE), ("initial_file", self._settings.initial_file)):
            if path is None or not path.exists():
                continue
            try:
                data = path.read_bytes()
                candidates.append((source, data, self._verify(data)))
            except (OSError, WhitelistRefused) as error:
                log.error(
                    "a stored whitelist does not verify; not put in force",
                    extra={
                        "event": "whitelist.load_refused",
                        "source": source,
                        "path": str(path),
                        "reason": str(error),
                    },
                )
        if not candidates:
            log.warning("no whitelist in force: remote boxes will be refused", extra={"event": "whitelist.none"})
            return None
        source, data, chosen = max(candidates, key=lambda candidate: candidate[2].generated_at)
        with self._refreshing:
            if source != "kept":
                self._keep(data)
            if source != "kept" or self._state.get("digest") != chosen.digest:
                self._state["confirmed_at"] = None  # only a download confirms a list
            self._state |= {"digest": chosen.digest, "verified_at": _iso(self._clock())}
            self._current = chosen
            self._save_state()
        log.info("whitelist in force", extra={"event": "whitelist.loaded", "source": source, **_summary(chosen)})
        return chosen

    def refresh(self) -> RefreshResult:
        """Download, verify and (if newer or equal) put in force; the old list stays otherwise."""
        if self._fetch is None:
            return RefreshResult("skipped", "no whitelist.url configured", self._current)
        with self._refreshing:
            now = self._clock()
            self._state["last_attempt"] = _iso(now)
            try:
                data = self._fetch()
            except (httpx.HTTPError, OSError) as error:
                return self._finish("download_failed", f"download failed: {str(error) or type(error).__name__}", None)
            except WhitelistRefused as error:
                return self._finish("refused", str(error), None)
            self._state["fetched_at"] = _iso(now)
            digest = hashlib.sha256(data).hexdigest()
            try:
                candidate = self._verify(data)
                self._refuse_rollback(candidate)
            except WhitelistRefused as error:
                return self._finish("refused", str(error), digest)
            self._state |= {"confirmed_at": _iso(now), "verified_at": _iso(now), "digest": candidate.digest}
            if self._current is not None and candidate.digest == self._current.digest:
                return self._finish("unchanged", "", digest)
            self._keep(data)
            self._current = candidate
            return self._finish("accepted", "", digest)

    def status(self) -> dict[str, object]:
        """What operators see. `age_hours` counts from the last time the publisher served the list
        in force (or from its DateDeGeneration if it never did, e.g. an `initial_file`)."""
        now, current, state = self._clock(), self._current, dict(self._state)
        since = _parse(state.get("confirmed_at")) if current and state.get("digest") == current.digest else None
        if current is not None and since is None:
            since = current.generated_at
        age = None if since is None else round((now - since).total_seconds() / 3600, 2)
        return {
            "url": self._settings.url,
            "in_force": current is not None,
            "generated_at": _iso(current.generated_at) if current else None,
            "confirmed_at": state.get("confirmed_at") if current and state.get("digest") == current.digest else None,
            "age_hours": age,
            "max_age_hours": self._settings.max_age_hours,
            "stale": age is None or age > self._settings.max_age_hours,
            "domains": len(current.domains) if current else 0,
            "digest": current.digest if current else None,
            "signer": current.signer if current else None,
            "last_attempt": state.get("last_attempt"),
            "last_result": state.get("last_result"),
            "last_error": state.get("last_error"),
        }

    def run(self, stop: threading.Event) -> None:
        """Refresh now, then every `refresh_hours` (`retry_minutes` after a failure) until `stop`."""
        while not stop.is_set():
            try:
                result = self.refresh()
            except Exception:  # the loop must outlive any single bad cycle
                log.exception("whitelist refresh crashed", extra={"event": "whitelist.refresh_crashed"})
                result = RefreshResult("download_failed", "internal error", self._current)
            status = self.status()
            if status["stale"]:
                log.warning(
                    "stale whitelist in force: boxes added since are refused, boxes removed since still accepted",
                    extra={"event": "whitelist.stale", "age_hours": status["age_hours"],
                           "max_age_hours": status["max_age_hours"], "last_error": status["last_error"]},
                )  # fmt: skip
            failed = result.outcome in ("refused", "download_failed")
            stop.wait(self._settings.retry_minutes * 60 if failed else self._settings.refresh_hours * 3600)

    # -- inside ------------------------------------------------------------------------------------

    def _verify(self, data: bytes) -> Whitelist:
        return verify_whitelist(
            data,
            self._anchors,
            signer_cn=self._settings.signer_cn,
            signer_ou=self._settings.signer_ou,
            at=self._clock(),
            crls=self._crls(),
        )

    def _refuse_rollback(self, candidate: Whitelist) -> None:
        current = self._current
        if current is not None and candidate.generated_at < current.generated_at:
            raise WhitelistRefused(
                f"rollback: the list offered was generated at {_iso(candidate.generated_at)}, "
                f"before the list in force ({_iso(current.generated_at)})"
            )

    def _finish(self, outcome: Outcome, reason: str, digest: str | None) -> RefreshResult:
        current = self._current
        self._state |= {"last_result": outcome, "last_error": reason or None}
        self._save_state()
        detail: dict[str, object] = {"result": outcome, "url": self._settings.url, "offered_digest": digest,
                                     "in_force_digest": current.digest if current else None}  # fmt: skip
        if reason:
            detail["reason"] = reason
        if current is not None:
            detail["generated_at"] = _iso(current.generated_at)
        success = outcome in ("accepted", "unchanged")
        self._audit.record(
            AuditEvent("whitelist.refresh", "system", "success" if success else "failure", detail=detail)
        )
        extra = {"event": f"whitelist.{outcome}", "reason": reason, "offered_digest": digest, "url": self._settings.url}
        if success:
            log.info("whitelist refreshed", extra=extra | (_summary(current) if current else {}))
        else:
            log.error("whitelist refresh failed; the list in force is kept", extra=extra)
        return RefreshResult(outcome, reason, current)

    def _download(self) -> bytes:
        settings = self._settings
        context = ssl.create_default_context(cafile=str(settings.ca_bundle) if settings.ca_bundle else None)
        chunks: list[bytes] = []
        size = 0
        with (
            httpx.Client(timeout=settings.timeout_seconds, verify=context, follow_redirects=False) as client,
            client.stream("GET", settings.url, headers={"Accept": "application/xml"}) as response,
        ):
            response.raise_for_status()
            for chunk in response.iter_bytes():
                size += len(chunk)
                if size > MAX_BYTES:
                    raise WhitelistRefused(f"the download is larger than {MAX_BYTES} bytes: not a whitelist")
                chunks.append(chunk)
        return b"".join(chunks)

    def _crls(self) -> list[x509.CertificateRevocationList]:
        crls: list[x509.CertificateRevocationList] = []
        for path in self._settings.crl_files:
            try:
                crls.extend(_read_crls(path.read_bytes()))
            except (OSError, ValueError) as error:
                raise WhitelistRefused(f"whitelist CRL {path} cannot be read ({error}): revocation unknown") from None
        return crls

    def _keep(self, data: bytes) -> None:
        _write_atomically(self._folder / LIST_FILE, data)

    def _save_state(self) -> None:
        _write_atomically(self._folder / STATE_FILE, json.dumps(self._state, indent=1).encode("utf-8"))


def _check_url(url: str) -> None:
    parts = urlsplit(url)
    if parts.scheme == "https" and parts.hostname:
        return
    if parts.scheme == "http" and parts.hostname in _LOOPBACK:
        return
    raise ConfigError(f"whitelist.url {url!r}: only https:// is accepted (http:// on the loopback, for tests)")


def _read_certificates(path: Path) -> list[x509.Certificate]:
    try:
        certificates = x509.load_pem_x509_certificates(path.read_bytes())
    except (OSError, ValueError) as error:
        raise ConfigError(f"whitelist.trust_anchors {path}: cannot read PEM certificates ({error})") from None
    return certificates


def _read_crls(blob: bytes) -> list[x509.CertificateRevocationList]:
    marker = b"-----BEGIN X509 CRL-----"
    if marker not in blob:
        return [x509.load_der_x509_crl(blob)]
    return [x509.load_pem_x509_crl(marker + part) for part in blob.split(marker)[1:]]


def _read_state(path: Path) -> dict[str, str | None]:
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return (
        {str(key): (None if value is None else str(value)) for key, value in raw.items()}
        if isinstance(raw, dict)
        else {}
    )


def _write_atomically(path: Path, data: bytes) -> None:
    """tmp + fsync + rename + fsync of the folder: a crash leaves the old file or the new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    with temporary.open("wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


def _summary(whitelist: Whitelist) -> dict[str, object]:
    return {"generated_at": _iso(whitelist.generated_at), "domains": len(whitelist.domains),
            "digest": whitelist.digest, "signer": whitelist.signer}  # fmt: skip


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _parse(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        return None
