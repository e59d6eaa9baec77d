"""The signature of the submission set: an enveloping XAdES (1.1.1) `ds:Signature` document whose
`ds:Manifest Id="IHEManifest"` lists `urn:oid:<uniqueId>` → base64(SHA-1(document bytes)) for each
document of the submission (DRIM-M §4.7, IHE DSG style).

Verified with signxml: the RSA signature over SignedInfo (canonicalised as its
CanonicalizationMethod says) and the digests of its two references, `#IHEManifest` and the XAdES
SignedProperties (inclusive C14N 1.0 when a reference has no transform, as XML-DSig §4.3.3.2
says). Then SignedProperties' SigningCertificate must name the KeyInfo certificate (digest, issuer,
serial), and that certificate must chain to the CA, not be revoked and carry the VIHF's structure id.
Everything wrong here is a Failure `XDSRegistryMetadataError` located at the signature entry: the
DMP judges the signature document as content, not as message security.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from signxml.algorithms import CanonicalizationMethod
from signxml.exceptions import InvalidCertificate, InvalidDigest, InvalidInput, InvalidSignature, SignXMLException

from drimbox.sandbox.dmp.answers import Fault, refuse
from drimbox.sandbox.dmp.ebxml import DS, XADES, Element, MalformedXml, parse_xml, q, text
from drimbox.sandbox.dmp.trust import Trust, check_structure, name_pairs, subject_pairs
from drimbox.sandbox.dmp.vihf import SHA1, SHA256, Algorithms, Verifier, key_info_chain

MANIFEST_TYPE = "http://www.w3.org/2000/09/xmldsig#Manifest"
SIGNED_PROPERTIES_TYPE = "http://uri.etsi.org/01903/v1.1.1#SignedProperties"
DIGESTS = {SHA1: hashlib.sha1, SHA256: hashlib.sha256}
METADATA_ERROR = "XDSRegistryMetadataError"


@dataclass(frozen=True)
class SignedManifest:
    """The verified manifest: reference URI → (digest algorithm URI, base64 digest)."""

    signer: x509.Certificate
    references: dict[str, tuple[str, str]]

    def matches(self, unique_id: str, document: bytes) -> bool:
        """DRIM-M §4.7: the manifest carries base64(SHA-1(document bytes)), SHA-1 whatever signs it."""
        algorithm, digest = self.references.get(f"urn:oid:{unique_id}", ("", ""))
        return algorithm == SHA1 and base64.b64encode(hashlib.sha1(document).digest()).decode() == digest


class _Invalid(Exception):
    """Why the signature document is refused (becomes the RegistryError's codeContext)."""


def check_xades(data: bytes, trust: Trust, algorithms: Algorithms, structure_id: str, location: str) -> SignedManifest:
    try:
        return _check(data, trust, algorithms, structure_id)
    except _Invalid as exc:
        raise refuse(METADATA_ERROR, f"signature du lot de soumission : {exc}", location) from None


def _check(data: bytes, trust: Trust, algorithms: Algorithms, structure_id: str) -> SignedManifest:
    try:
        root = parse_xml(data)
    except MalformedXml as exc:
        raise _Invalid(str(exc)) from None
    if root.tag != q(DS, "Signature"):
        raise _Invalid("l'élément racine doit être ds:Signature")
    manifest_ref, properties_ref = _references(root)
    _check_algorithms(root, algorithms)
    try:
        signer = trust.verify_chain(key_info_chain(root, "XAdES"))
        check_structure(signer, structure_id, "de signature XAdES")
    except Fault as exc:
        raise _Invalid(exc.reason) from None
    config = algorithms.config(
        location="./", expect_references=2, default_reference_c14n_method=CanonicalizationMethod.CANONICAL_XML_1_0
    )
    try:
        # No XML-DSig schema validation: the samples the DMP accepted set Signature/@Id to the
        # signature's OID (DRIM-M §4.7), which is not an xs:ID.
        results = Verifier().verify(data, x509_cert=signer, expect_config=config, validate_schema=False)
    except (InvalidDigest, InvalidSignature, InvalidCertificate, InvalidInput, SignXMLException) as exc:
        raise _Invalid(f"vérification impossible : {exc}") from None
    signed = [result.signed_xml for result in results] if isinstance(results, list) else []
    manifest = _signed(signed, q(DS, "Manifest"), manifest_ref)
    _check_signing_certificate(_signed(signed, q(XADES, "SignedProperties"), properties_ref), signer)
    references: dict[str, tuple[str, str]] = {}
    for reference in manifest.iterfind(q(DS, "Reference")):
        method = reference.find(q(DS, "DigestMethod"))
        references[reference.get("URI", "")] = ("" if method is None else method.get("Algorithm", ""),
                                                text(reference.find(q(DS, "DigestValue"))))  # fmt: skip
    return SignedManifest(signer, references)


def _references(root: Element) -> tuple[str, str]:
    """The Ids the two SignedInfo references point to: the IHE manifest, the SignedProperties."""
    found = {
        ref.get("Type", ""): ref.get("URI", "") for ref in root.iterfind(f"{q(DS, 'SignedInfo')}/{q(DS, 'Reference')}")
    }
    count = len(root.findall(f"{q(DS, 'SignedInfo')}/{q(DS, 'Reference')}"))
    if (
        count != 2
        or found.get(MANIFEST_TYPE) != "#IHEManifest"
        or not found.get(SIGNED_PROPERTIES_TYPE, "#").strip("#")
    ):
        raise _Invalid("SignedInfo doit référencer #IHEManifest (Manifest) et les SignedProperties XAdES")
    return "IHEManifest", found[SIGNED_PROPERTIES_TYPE][1:]


def _check_algorithms(root: Element, algorithms: Algorithms) -> None:
    method = root.find(f"{q(DS, 'SignedInfo')}/{q(DS, 'SignatureMethod')}")
    digests = {
        m.get("Algorithm") for m in root.iterfind(f"{q(DS, 'SignedInfo')}/{q(DS, 'Reference')}/{q(DS, 'DigestMethod')}")
    }
    if method is None or method.get("Algorithm") not in algorithms.signature or not digests <= algorithms.digest:
        raise _Invalid("algorithme de signature ou d'empreinte non accepté")


def _signed(signed: list[Element | None], tag: str, element_id: str) -> Element:
    for element in signed:
        if element is not None and element.tag == tag and element.get("Id") == element_id:
            return element
    raise _Invalid(f"la référence #{element_id} ne désigne pas un {tag.rpartition('}')[2]}")


def _check_signing_certificate(properties: Element, signer: x509.Certificate) -> None:
    """XAdES 1.1.1 SigningCertificate: the KeyInfo certificate's digest, issuer and serial."""
    signed = properties.find(q(XADES, "SignedSignatureProperties"))
    cert = None if signed is None else signed.find(f"{q(XADES, 'SigningCertificate')}/{q(XADES, 'Cert')}")
    if signed is None or cert is None or not text(signed.find(q(XADES, "SigningTime"))):
        raise _Invalid("SignedProperties sans SigningTime ou SigningCertificate")
    method = cert.find(f"{q(XADES, 'CertDigest')}/{q(XADES, 'DigestMethod')}")
    method = method if method is not None else cert.find(f"{q(XADES, 'CertDigest')}/{q(DS, 'DigestMethod')}")
    hasher = DIGESTS.get("" if method is None else method.get("Algorithm", ""))
    digest = text(cert.find(f"{q(XADES, 'CertDigest')}/{q(XADES, 'DigestValue')}"))
    digest = digest or text(cert.find(f"{q(XADES, 'CertDigest')}/{q(DS, 'DigestValue')}"))
    expected = "" if hasher is None else base64.b64encode(hasher(signer.public_bytes(Encoding.DER)).digest()).decode()
    issuer = text(cert.find(f"{q(XADES, 'IssuerSerial')}/{q(DS, 'X509IssuerName')}"))
    serial = text(cert.find(f"{q(XADES, 'IssuerSerial')}/{q(DS, 'X509SerialNumber')}"))
    try:
        same_issuer = name_pairs(issuer) == subject_pairs(signer.issuer)
    except ValueError:
        same_issuer = False
    if not expected or digest != expected or serial != str(signer.serial_number) or not same_issuer:
        raise _Invalid("SigningCertificate ne désigne pas le certificat de KeyInfo")
