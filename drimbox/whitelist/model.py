"""The ANS whitelist as the box uses it: which remote boxes (DN, host) may talk to us (DRIM-M A9).

A DN arrives in several spellings: the list writes `CN=…,OU=…,O=…,ST=…,C=FR`, a certificate's
RFC 4514 string has the same order, OpenSSL and some logs write `C=FR, ST=…, …, CN=…` with spaces,
and case varies between tools. Matching compares the multiset of (attribute type, value) pairs,
values case- and whitespace-insensitive, so none of these differences refuses a listed box, while
any difference of substance (another OU, another CN) still does. Domains are keyed by `db` and DN:
older lists repeat an `Identifiant` for different boxes.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.x509.oid import NameOID

log = logging.getLogger(__name__)

DnKey = tuple[tuple[str, str], ...]

_TYPES = {
    "CN": NameOID.COMMON_NAME,
    "OU": NameOID.ORGANIZATIONAL_UNIT_NAME,
    "O": NameOID.ORGANIZATION_NAME,
    "ST": NameOID.STATE_OR_PROVINCE_NAME,
    "S": NameOID.STATE_OR_PROVINCE_NAME,
    "C": NameOID.COUNTRY_NAME,
    "L": NameOID.LOCALITY_NAME,
    "STREET": NameOID.STREET_ADDRESS,
    "DC": NameOID.DOMAIN_COMPONENT,
    "UID": NameOID.USER_ID,
    "E": NameOID.EMAIL_ADDRESS,
    "EMAIL": NameOID.EMAIL_ADDRESS,
    "EMAILADDRESS": NameOID.EMAIL_ADDRESS,
    "SERIALNUMBER": NameOID.SERIAL_NUMBER,
    "SN": NameOID.SURNAME,
    "GN": NameOID.GIVEN_NAME,
    "GIVENNAME": NameOID.GIVEN_NAME,
    "T": NameOID.TITLE,
    "TITLE": NameOID.TITLE,
    "ORGANIZATIONIDENTIFIER": NameOID.ORGANIZATION_IDENTIFIER,
}


@dataclass(frozen=True)
class Domain:
    """One `Domaine` of the list: a remote DRIMbox (`db`), its viewer (`vi`) and its TLS identity."""

    identifier: str
    db: str
    vi: str
    denomination: str
    operator_dn: str
    support_contact: str
    updated_at: datetime | None


@dataclass(frozen=True)
class Whitelist:
    """A verified list in force. `digest` (SHA-256 of the raw bytes) names this exact file in logs
    and the audit trail; `signer` is the DN of the certificate that signed it."""

    generated_at: datetime
    domains: tuple[Domain, ...]
    digest: str
    signer: str
    _by_dn: dict[DnKey, Domain] = field(init=False, repr=False, compare=False)
    _hosts: frozenset[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # indexes built once: `allows_dn` runs on every TLS connection
        by_dn: dict[DnKey, Domain] = {}
        for domain in self.domains:
            try:
                by_dn.setdefault(dn_key(domain.operator_dn), domain)
            except ValueError as error:
                log.warning(
                    "a whitelist DN cannot be read; that box will not be recognised by its certificate",
                    extra={"event": "whitelist.bad_dn", "db": domain.db, "dn": domain.operator_dn, "error": str(error)},
                )
        object.__setattr__(self, "_by_dn", by_dn)
        object.__setattr__(self, "_hosts", frozenset(filter(None, (_host(domain.db) for domain in self.domains))))

    def domain_for_dn(self, dn: str | x509.Name) -> Domain | None:
        """The domain whose `DNCertificatOperateur` is this certificate subject, if any."""
        try:
            return self._by_dn.get(dn_key(dn))
        except ValueError:
            return None

    def allows_dn(self, dn: str | x509.Name) -> bool:
        return self.domain_for_dn(dn) is not None

    def allows_host(self, host: str) -> bool:
        """Whether `host` is the `db` address of a listed box (where we may send a Retrieve)."""
        return _host(host) in self._hosts


def dn_of(cert: x509.Certificate) -> str:
    """A certificate's subject as an RFC 4514 string, the form `allows_dn` and the logs take."""
    return cert.subject.rfc4514_string()


def dn_key(dn: str | x509.Name) -> DnKey:
    """The comparison key of a DN: sorted (OID, folded value) pairs. Raises ValueError when unreadable."""
    if isinstance(dn, x509.Name):
        pairs: Iterable[tuple[str, str]] = ((a.oid.dotted_string, str(a.value)) for a in dn)
    else:
        pairs = _parse(dn)
    key = tuple(sorted((oid, " ".join(value.split()).casefold()) for oid, value in pairs))
    if not key:
        raise ValueError("empty DN")
    return key


def _parse(text: str) -> list[tuple[str, str]]:
    """Read `TYPE=value` pairs separated by `,` `+` (or `;`), or OpenSSL's `/TYPE=value/…` form."""
    text = text.strip()
    separators = "/" if text.startswith("/") else ",+;"
    return [_pair(part) for part in _split(text.lstrip("/") if separators == "/" else text, separators)]


def _split(text: str, separators: str) -> list[str]:
    parts, current, index, quoted = [], [], 0, False
    while index < len(text):
        char = text[index]
        if char == "\\" and index + 1 < len(text):
            current.append(text[index : index + 2])
            index += 2
            continue
        if char == '"':
            quoted = not quoted
        if char in separators and not quoted:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
        index += 1
    parts.append("".join(current))
    return [part for part in parts if part.strip()]


def _pair(part: str) -> tuple[str, str]:
    name, equals, value = part.partition("=")
    name = name.strip()
    if not equals or not name:
        raise ValueError(f"not a TYPE=value pair: {part!r}")
    oid = _TYPES.get(name.upper())
    if oid is None:
        if not all(piece.isdigit() for piece in name.removeprefix("OID.").split(".")):
            raise ValueError(f"unknown DN attribute type {name!r}")
        return name.removeprefix("OID."), _unescape(value.strip())
    return oid.dotted_string, _unescape(value.strip())


def _unescape(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] == '"':
        value = value[1:-1]
    raw, index = bytearray(), 0
    while index < len(value):
        char = value[index]
        pair = value[index + 1 : index + 3]
        if char == "\\" and len(pair) == 2 and all(c in "0123456789abcdefABCDEF" for c in pair):
            raw.append(int(pair, 16))
            index += 3
        elif char == "\\" and index + 1 < len(value):
            raw.extend(value[index + 1].encode("utf-8"))
            index += 2
        else:
            raw.extend(char.encode("utf-8"))
            index += 1
    return raw.decode("utf-8", errors="replace")


def _host(value: str) -> str:
    value = value.strip()
    if "://" in value:
        value = urlsplit(value).hostname or ""
    return value.rstrip(".").casefold()
