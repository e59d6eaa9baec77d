"""Whether the certificate that signed the list is the ANS's whitelist signer, now.

The signer is an IGC-Santé ORG signature certificate (keyUsage digitalSignature/nonRepudiation,
EKU emailProtection on the TEST one), not a TLS certificate: cryptography's web-PKI profile is kept
for the CAs but the end-entity profile is replaced by "a non-CA signing key". The chain must reach
one of the configured anchors at the verification time; the subject must carry the configured CN
and OU (anyone can buy an IGC-Santé certificate, only the ANS gets this name); when CRLs are
configured every certificate below the anchor must be covered by one and not be on it.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Sequence
from datetime import datetime

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from cryptography.x509.verification import (
    Criticality,
    ExtensionPolicy,
    Policy,
    PolicyBuilder,
    Store,
    VerificationError,
)

from drimbox.errors import WhitelistRefused

log = logging.getLogger(__name__)


def check_signer(
    signer: x509.Certificate,
    others: Sequence[x509.Certificate],
    anchors: Sequence[x509.Certificate],
    *,
    signer_cn: str,
    signer_ou: str,
    at: datetime,
    crls: Sequence[x509.CertificateRevocationList] = (),
) -> list[x509.Certificate]:
    """The verified chain, signer first and anchor last; raises WhitelistRefused with the reason."""
    subject = signer.subject.rfc4514_string()
    if not anchors:
        raise WhitelistRefused("no trust anchor configured (whitelist.trust_anchors): the signer cannot be trusted")
    if not signer.not_valid_before_utc <= at <= signer.not_valid_after_utc:
        raise WhitelistRefused(
            f"signer {subject} is not valid at {at.isoformat()} (valid from "
            f"{signer.not_valid_before_utc.isoformat()} to {signer.not_valid_after_utc.isoformat()})"
        )
    verifier = (
        PolicyBuilder()
        .store(Store(list(anchors)))
        .time(at)
        .extension_policies(ca_policy=ExtensionPolicy.webpki_defaults_ca(), ee_policy=_signing_policy())
        .build_client_verifier()
    )
    try:
        chain = verifier.verify(signer, list(others)).chain
    except VerificationError as error:
        raise WhitelistRefused(f"signer {subject} not chained to the trusted ANS CA: {error}") from None
    _check_name(signer, signer_cn, signer_ou)
    if crls:
        _check_revocation(chain, crls, at)
    return chain


def _check_name(signer: x509.Certificate, signer_cn: str, signer_ou: str) -> None:
    names = [str(a.value) for a in signer.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    units = [str(a.value) for a in signer.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)]
    if names != [signer_cn] or units != [signer_ou]:
        raise WhitelistRefused(
            f"signer {signer.subject.rfc4514_string()} is not the whitelist signer "
            f"(expected CN={signer_cn}, OU={signer_ou})"
        )


def _check_revocation(
    chain: list[x509.Certificate], crls: Sequence[x509.CertificateRevocationList], at: datetime
) -> None:
    for cert, issuer in itertools.pairwise(chain):
        relevant = [crl for crl in crls if crl.issuer == cert.issuer]
        if not relevant:
            raise WhitelistRefused(
                f"revocation of {cert.subject.rfc4514_string()} cannot be checked: no CRL of "
                f"{cert.issuer.rfc4514_string()} among whitelist.crl_files"
            )
        for crl in relevant:
            key = issuer.public_key()
            if not isinstance(key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey) or not crl.is_signature_valid(key):
                raise WhitelistRefused(f"the CRL of {cert.issuer.rfc4514_string()} does not verify: refused")
            if crl.next_update_utc is not None and crl.next_update_utc < at:
                log.warning(
                    "a whitelist CRL is past its next update; using it anyway",
                    extra={"event": "whitelist.crl_stale", "issuer": crl.issuer.rfc4514_string(),
                           "next_update": crl.next_update_utc.isoformat()},
                )  # fmt: skip
            if crl.get_revoked_certificate_by_serial_number(cert.serial_number) is not None:
                raise WhitelistRefused(
                    f"certificate {cert.subject.rfc4514_string()} (serial {cert.serial_number:x}) is revoked"
                )


def _signing_policy() -> ExtensionPolicy:
    """End-entity profile of a signing certificate: signature key usage, not a CA."""

    def signing_usage(_policy: Policy, _cert: x509.Certificate, usage: x509.KeyUsage) -> None:
        if not (usage.digital_signature or usage.content_commitment):
            raise ValueError("the signer's key usage allows neither digitalSignature nor nonRepudiation")

    def not_a_ca(_policy: Policy, _cert: x509.Certificate, constraints: x509.BasicConstraints | None) -> None:
        if constraints is not None and constraints.ca:
            raise ValueError("the signer is a CA certificate")

    return (
        ExtensionPolicy.permit_all()
        .require_present(x509.KeyUsage, Criticality.AGNOSTIC, signing_usage)
        .may_be_present(x509.BasicConstraints, Criticality.AGNOSTIC, not_a_ca)
    )
