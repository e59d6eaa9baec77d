"""Our organisation's certificates for the DMP: one PKCS#12 authenticates TLS, one signs (DRIM-M §4.5).

IGC-Santé delivers ORG certificates as PKCS#12 files; the DMP wants the AUTH one as the TLS client
certificate and the SIGN one behind the VIHF and the XAdES signature. Python's `ssl` only loads
client certificates from files, so the key crosses the disk for the time of one call: in a private
(0700) temporary folder, in a 0600 file, encrypted with a one-time password, deleted at once.
"""

from __future__ import annotations

import os
import secrets
import shutil
import ssl
import tempfile
from dataclasses import dataclass
from pathlib import Path

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import pkcs12

from drimbox.errors import ConfigError


@dataclass(frozen=True)
class Identity:
    """A private key, its certificate and the intermediate certificates that go with it.

    Only RSA: both signature algorithms the DMP accepts (rsa-sha1, rsa-sha256) need it.
    """

    key: rsa.RSAPrivateKey
    certificate: x509.Certificate
    chain: tuple[x509.Certificate, ...] = ()

    @property
    def subject_dn(self) -> str:
        """The subject as the VIHF Issuer writes it: `CN=DRIMbox, OU=499700367909006, ..., C=FR`."""
        return distinguished_name(self.certificate.subject)

    @property
    def issuer_dn(self) -> str:
        return distinguished_name(self.certificate.issuer)


def distinguished_name(name: x509.Name) -> str:
    """A DN most-specific first with `, ` separators, as Java's X500Principal prints it.

    The DMP compares the VIHF Issuer with the signing certificate in that form (DRIM-M §4.6 sample);
    cryptography's RFC 4514 string has the same order but no spaces.
    """
    return ", ".join(rdn.rfc4514_string() for rdn in reversed(name.rdns))


def load_identity(path: Path | None, password: str, key_name: str) -> Identity:
    """Read a PKCS#12 file; `key_name` (e.g. `dmp.auth_pkcs12`) names the setting in errors."""
    if path is None:
        raise ConfigError(f"{key_name}: required (the organisation's IGC-Santé ORG certificate, PKCS#12)")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{key_name}: cannot read {path}: {exc.strerror or exc}") from exc
    try:
        key, certificate, extra = pkcs12.load_key_and_certificates(data, password.encode() if password else None)
    except ValueError as exc:
        raise ConfigError(f"{key_name}: {path} is not a PKCS#12 file this password opens ({exc})") from exc
    if certificate is None or key is None:
        raise ConfigError(f"{key_name}: {path} must hold a private key and its certificate")
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ConfigError(f"{key_name}: {path} holds a {type(key).__name__}; the DMP needs an RSA key")
    return Identity(key=key, certificate=certificate, chain=tuple(extra))


def tls_context(identity: Identity | None, ca_bundle: Path | None, key_name: str = "dmp") -> ssl.SSLContext:
    """A client context: TLS 1.2 or later, the DMP's CAs (certifi's when none given), our certificate.

    `identity` None gives a context without client certificate (plain-HTTP sandbox, tests).
    """
    try:
        if ca_bundle is not None:
            context = ssl.create_default_context(cafile=str(ca_bundle))
        else:
            context = httpx.create_ssl_context()
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"{key_name}.ca_bundle: cannot load {ca_bundle}: {exc}") from exc
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if identity is not None:
        _load_client_certificate(context, identity, key_name)
    return context


def _load_client_certificate(context: ssl.SSLContext, identity: Identity, key_name: str) -> None:
    password = secrets.token_urlsafe(32).encode()
    pem = identity.key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(password),
    )
    for certificate in (identity.certificate, *identity.chain):
        pem += certificate.public_bytes(serialization.Encoding.PEM)
    folder = tempfile.mkdtemp(prefix="drimbox-tls-")  # mode 0700
    try:
        path = os.path.join(folder, "client.pem")
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "wb") as file:
            file.write(pem)
        context.load_cert_chain(path, password=password)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"{key_name}.auth_pkcs12: the TLS layer refuses the client certificate: {exc}") from exc
    finally:
        shutil.rmtree(folder, ignore_errors=True)
