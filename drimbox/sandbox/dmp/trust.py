"""Who the sandbox DMP trusts: the IGC-Santé stand-in CA, its CRLs, and the structure id in an
ORG certificate's OU (DRIM-M §4.5: "subject must contain OU = structure id").

TLS chain checks are OpenSSL's (in the listener); XML signature chains are checked here with
cryptography's verifier, and revocation against the CRL files at each call, so `pki.revoke()`
takes effect without restarting the sandbox.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from cryptography import x509
from cryptography.x509 import verification
from cryptography.x509.oid import NameOID

from drimbox.sandbox.dmp.answers import Fault

_NAMES = {
    "CN": NameOID.COMMON_NAME,
    "OU": NameOID.ORGANIZATIONAL_UNIT_NAME,
    "O": NameOID.ORGANIZATION_NAME,
    "C": NameOID.COUNTRY_NAME,
    "ST": NameOID.STATE_OR_PROVINCE_NAME,
    "S": NameOID.STATE_OR_PROVINCE_NAME,
    "L": NameOID.LOCALITY_NAME,
    "STREET": NameOID.STREET_ADDRESS,
    "SERIALNUMBER": NameOID.SERIAL_NUMBER,
    "E": NameOID.EMAIL_ADDRESS,
    "EMAILADDRESS": NameOID.EMAIL_ADDRESS,
    "DC": NameOID.DOMAIN_COMPONENT,
    "UID": NameOID.USER_ID,
}


def failed_authentication(reason: str) -> Fault:
    return Fault("wsse:FailedAuthentication", reason, detail="CERTIFICAT_INVALIDE")


class Trust:
    """The CA bundle and CRLs a sandbox DMP checks certificates against."""

    def __init__(self, ca_bundle: Path, crls: Sequence[Path] = ()) -> None:
        self.ca_bundle = ca_bundle
        self.crl_files = tuple(crls)
        self._anchors = x509.load_pem_x509_certificates(ca_bundle.read_bytes())

    def verify_chain(self, chain: Sequence[x509.Certificate], when: datetime | None = None) -> x509.Certificate:
        """The leaf of `chain` (leaf first, then any intermediates) once it chains to the bundle and
        is not revoked; raises a FailedAuthentication Fault otherwise."""
        if not chain:
            raise failed_authentication("aucun certificat de signature")
        builder = verification.PolicyBuilder().store(verification.Store(self._anchors))
        builder = builder.time(when or datetime.now(UTC)).extension_policies(
            ee_policy=verification.ExtensionPolicy.permit_all(),
            ca_policy=verification.ExtensionPolicy.webpki_defaults_ca(),
        )
        try:
            builder.build_client_verifier().verify(chain[0], list(chain[1:]))
        except verification.VerificationError as exc:
            raise failed_authentication(f"certificat non reconnu par l'IGC-Santé (sandbox) : {exc}") from None
        self.check_not_revoked(chain[0])
        return chain[0]

    def check_not_revoked(self, cert: x509.Certificate) -> None:
        for path in self.crl_files:
            crl = x509.load_pem_x509_crl(path.read_bytes())
            if crl.issuer == cert.issuer and crl.get_revoked_certificate_by_serial_number(cert.serial_number):
                raise failed_authentication(f"certificat révoqué (numéro de série {cert.serial_number})")


def structure_ids(cert: x509.Certificate) -> list[str]:
    """The OU values of a subject: an IGC-Santé ORG certificate has one, the structure id."""
    return [str(attr.value) for attr in cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)]


def check_structure(cert: x509.Certificate, structure_id: str, what: str) -> None:
    if structure_id not in structure_ids(cert):
        raise failed_authentication(f"l'OU du certificat {what} ne correspond pas à Identifiant_Structure")


def name_pairs(dn: str) -> frozenset[tuple[str, str]]:
    """A DN string (RFC 4514 or Java's `CN=a, OU=b` with spaces) as a set of (OID, value);
    ValueError when it cannot be read. Order and spaces after separators do not matter."""
    pairs: set[tuple[str, str]] = set()
    for rdn in _split(dn, ","):
        for atav in _split(rdn, "+"):
            name, equals, value = atav.partition("=")
            key = name.strip().upper()
            if not equals or not value.strip():
                raise ValueError(f"unreadable RDN {atav!r}")
            oid = _NAMES.get(key) or (x509.ObjectIdentifier(key) if re.fullmatch(r"\d+(\.\d+)+", key) else None)
            if oid is None:
                raise ValueError(f"unknown attribute type {key!r}")
            pairs.add((oid.dotted_string, _unescape(value.strip())))
    return frozenset(pairs)


def subject_pairs(name: x509.Name) -> frozenset[tuple[str, str]]:
    return frozenset((attr.oid.dotted_string, str(attr.value)) for attr in name)


def _split(value: str, separator: str) -> list[str]:
    parts, current, escaped = [], "", False
    for char in value:
        if escaped:
            current, escaped = current + "\\" + char, False
        elif char == "\\":
            escaped = True
        elif char == separator:
            parts.append(current)
            current = ""
        else:
            current += char
    if escaped:
        raise ValueError("DN ends with a lone backslash")
    return [*parts, current]


def _unescape(value: str) -> str:
    raw = re.sub(rb"\\([0-9A-Fa-f]{2})", lambda m: bytes([int(m.group(1), 16)]), value.encode("utf-8"))
    return re.sub(r"\\(.)", r"\1", raw.decode("utf-8"))
