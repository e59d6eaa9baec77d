"""The listener's SSL context: what OpenSSL checks during the handshake, rebuilt when a CRL changes.

TLS 1.2 at least (1.3 when configured), AEAD ECDHE suites only for 1.2, no compression, no
renegotiation, no session resumption (a resumed session would skip the revocation check), a client
certificate required and chained to `client_ca`, and, when revocation includes "crl", the CRLs of
`crl_files`: a CA whose CRL is missing or expired then fails the handshake (fail closed). The site
refreshes the CRL files (cron, IGC-Santé download); we notice a changed file within
`reload_interval` seconds and use a new context for the next handshakes, without restart.
"""

from __future__ import annotations

import logging
import os
import ssl
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from drimbox.config import TlsSettings
from drimbox.errors import ConfigError

log = logging.getLogger(__name__)

CIPHERS_TLS12 = "ECDHE+AESGCM:ECDHE+CHACHA20:!aNULL:!eNULL"
_VERSIONS = {"TLSv1.2": ssl.TLSVersion.TLSv1_2, "TLSv1.3": ssl.TLSVersion.TLSv1_3}


def build_server_context(settings: TlsSettings) -> ssl.SSLContext:
    """A fresh context from the settings; `ConfigError` names the key whose file is unusable."""
    if settings.certificate is None or settings.key is None:
        raise ConfigError("http.tls.certificate: a TLS listener needs a certificate and a key")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = _VERSIONS[settings.minimum_version]
    context.set_ciphers(CIPHERS_TLS12)
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION | ssl.OP_NO_TICKET
    context.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    context.num_tickets = 0  # TLS 1.3: no resumption tickets either
    context.set_alpn_protocols(["http/1.1"])
    _load(context.load_cert_chain, "http.tls.certificate", settings.certificate, settings.key)
    if settings.client_ca is None:
        return context
    context.verify_mode = ssl.CERT_REQUIRED
    _load(context.load_verify_locations, "http.tls.client_ca", settings.client_ca)
    if "crl" in settings.revocation:
        context.verify_flags |= _load_crls(context, settings.client_ca, settings.crl_files)
    return context


def _load(loader: Callable[..., None], key: str, *paths: Path) -> None:
    try:
        loader(*(str(path) for path in paths))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"{key}: cannot use {', '.join(map(str, paths))} ({exc})") from exc


def _load_crls(context: ssl.SSLContext, client_ca: Path, crl_files: list[Path]) -> ssl.VerifyFlags:
    """Load every CRL (PEM or DER) and choose how far up the chain OpenSSL checks them: the whole
    chain when every CA of `client_ca` has its CRL, else the leaf only (a leaf whose issuer has no
    CRL is still refused)."""
    crls: list[x509.CertificateRevocationList] = []
    for path in crl_files:
        try:
            data = path.read_bytes()
            crls.extend(_parse_crls(data))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"http.tls.crl_files: cannot read {path} as a PEM or DER CRL ({exc})") from exc
    pem = b"".join(crl.public_bytes(serialization.Encoding.PEM) for crl in crls)
    # OpenSSL reads CRLs from a file only (cadata takes certificates): a private temporary file
    handle, name = tempfile.mkstemp(prefix="drimbox-crl-", suffix=".pem")
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(pem)
        _load(context.load_verify_locations, "http.tls.crl_files", Path(name))
    finally:
        os.unlink(name)
    issuers = {crl.issuer for crl in crls}
    authorities = {cert.subject for cert in x509.load_pem_x509_certificates(client_ca.read_bytes())}
    return ssl.VERIFY_CRL_CHECK_CHAIN if authorities <= issuers else ssl.VERIFY_CRL_CHECK_LEAF


def _parse_crls(data: bytes) -> list[x509.CertificateRevocationList]:
    if b"-----BEGIN X509 CRL-----" not in data:
        return [x509.load_der_x509_crl(data)]
    marker = b"-----END X509 CRL-----"
    blocks = [block + marker for block in data.split(marker) if b"-----BEGIN X509 CRL-----" in block]
    return [x509.load_pem_x509_crl(block) for block in blocks]


class ServerContext:
    """The context in force, rebuilt when `crl_files` (or the certificates) change on disk.

    Checking costs a few `stat` calls, done at most every `reload_interval` seconds (`clock` is
    injectable for tests). A rebuild that fails (a CRL half written) keeps the previous context and
    tries again at the next check: the last good CRLs keep refusing what they refused.
    """

    def __init__(
        self, settings: TlsSettings, *, reload_interval: float = 5.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.settings = settings
        self.reload_interval = reload_interval
        self._clock = clock
        self._lock = threading.Lock()
        self._stamp = self._files_stamp()
        self._context = build_server_context(settings)
        self._checked = clock()

    @property
    def mutual(self) -> bool:
        return self.settings.client_ca is not None

    def current(self) -> ssl.SSLContext:
        with self._lock:
            now = self._clock()
            if now - self._checked >= self.reload_interval:
                self._checked = now
                self._reload_if_changed()
            return self._context

    def _reload_if_changed(self) -> None:
        stamp = self._files_stamp()
        if stamp == self._stamp:
            return
        try:
            context = build_server_context(self.settings)
        except ConfigError as exc:
            log.error("TLS files changed but cannot be loaded; keeping the previous ones",
                      extra={"event": "mtls.reload_failed", "reason": str(exc)})  # fmt: skip
            return
        self._context, self._stamp = context, stamp
        log.info("TLS context reloaded", extra={"event": "mtls.reloaded"})

    def _files_stamp(self) -> tuple[tuple[str, int, int, int], ...]:
        tls = self.settings
        paths = [p for p in (tls.certificate, tls.key, tls.client_ca) if p is not None]
        if "crl" in tls.revocation:
            paths.extend(tls.crl_files)
        return tuple(_stamp(path) for path in paths)


def _stamp(path: Path) -> tuple[str, int, int, int]:
    try:
        info = path.stat()
    except OSError:
        return (str(path), -1, -1, -1)
    return (str(path), info.st_mtime_ns, info.st_size, info.st_ino)
