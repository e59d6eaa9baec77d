"""`verify_whitelist`: from downloaded bytes to a list the box may put in force, or a refusal.

Order of the checks: the XML signature itself (digests, then the RSA value with the certificate
it carries), then trust in that certificate (validity, chain to the configured anchors, CN/OU,
CRLs), then the XAdES binding of the signing certificate, and only then the content. Each step
raises `WhitelistRefused` with a reason an operator can act on.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Sequence
from datetime import UTC, datetime

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from lxml import etree

from drimbox.errors import WhitelistRefused
from drimbox.whitelist.chain import check_signer
from drimbox.whitelist.content import read_whitelist
from drimbox.whitelist.model import Whitelist, dn_of
from drimbox.whitelist.xmldsig import DIGESTS, DS, XADES, check_signature

_SHA1 = "http://www.w3.org/2000/09/xmldsig#sha1"  # accepted for the XAdES certificate digest only


def verify_whitelist(
    data: bytes,
    trust_anchors: Sequence[x509.Certificate],
    *,
    signer_cn: str,
    signer_ou: str,
    at: datetime | None = None,
    crls: Sequence[x509.CertificateRevocationList] = (),
) -> Whitelist:
    """The list `data` carries, if its signature verifies and its signer is the ANS's; else raises
    WhitelistRefused. `at` (default: now) is when the signer must be valid."""
    at = datetime.now(UTC) if at is None else (at if at.tzinfo else at.replace(tzinfo=UTC))
    checked = check_signature(data)
    check_signer(
        checked.signer, checked.others, trust_anchors, signer_cn=signer_cn, signer_ou=signer_ou, at=at, crls=crls
    )
    if checked.signed_properties is not None:
        _check_signing_certificate(checked.signed_properties, checked.signer)
    return read_whitelist(checked.content, data, dn_of(checked.signer))


def _check_signing_certificate(properties: etree._Element, signer: x509.Certificate) -> None:
    """XAdES SigningCertificate(V2), when present, must name the certificate that signed."""
    certs = properties.findall(f".//{{{XADES}}}SigningCertificateV2/{{{XADES}}}Cert")
    certs += properties.findall(f".//{{{XADES}}}SigningCertificate/{{{XADES}}}Cert")
    if not certs:
        return
    der = signer.public_bytes(Encoding.DER)
    for cert in certs:
        method = cert.find(f"{{{XADES}}}CertDigest/{{{DS}}}DigestMethod")
        value = cert.find(f"{{{XADES}}}CertDigest/{{{DS}}}DigestValue")
        if method is None or value is None:
            continue
        algorithm = method.get("Algorithm", "")
        digest = DIGESTS.get(algorithm) or (_sha1 if algorithm == _SHA1 else None)
        if digest is None:
            continue
        if hmac.compare_digest(digest(der), _decode(value.text)):
            return
    raise WhitelistRefused("the XAdES SigningCertificate does not name the certificate that signed the list")


def _sha1(octets: bytes) -> bytes:
    return hashlib.sha1(octets).digest()


def _decode(text: str | None) -> bytes:
    try:
        return base64.b64decode("".join((text or "").split()), validate=True)
    except (binascii.Error, ValueError):
        return b""
