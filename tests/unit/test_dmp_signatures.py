"""The VIHF and XAdES signatures verify independently, with rsa-sha1 (the DMP sample) and rsa-sha256."""

from __future__ import annotations

import base64
import hashlib
from typing import Literal

import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from lxml import etree
from signxml.algorithms import DigestAlgorithm, SignatureMethod
from signxml.exceptions import InvalidDigest
from signxml.verifier import SignatureConfiguration, XMLVerifier

from drimbox.dmp.identity import load_identity
from drimbox.dmp.soap import envelope
from drimbox.dmp.vihf import DmpSigner, signed_assertion
from drimbox.dmp.xades import manifest_digest, submission_signature
from tests.unit.test_dmp_identity import SIGN_PASSWORD, Pki, build_pki
from tests.unit.test_dmp_samples import KOS_FILE, NS, SITE, SUBMISSION_UID, dmp_settings, sample_submission

Algorithm = Literal["rsa-sha1", "rsa-sha256"]
ALGORITHMS: list[Algorithm] = ["rsa-sha1", "rsa-sha256"]
_URIS = {
    "rsa-sha1": ("http://www.w3.org/2000/09/xmldsig#rsa-sha1", "http://www.w3.org/2000/09/xmldsig#sha1"),
    "rsa-sha256": ("http://www.w3.org/2001/04/xmldsig-more#rsa-sha256", "http://www.w3.org/2001/04/xmlenc#sha256"),
}


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return build_pki(tmp_path_factory.mktemp("pki"))


def _assertion_in_envelope(pki: Pki, algorithm: Algorithm) -> bytes:
    """The VIHF as the DMP receives it: inside wsse:Security of a SOAP envelope, then cut out again."""
    submission = sample_submission()
    settings = dmp_settings(pki, signature_algorithm=algorithm)
    signer = load_identity(pki.sign_p12, SIGN_PASSWORD, "dmp.signature_pkcs12")
    assertion = signed_assertion(submission.report, submission.report.patient.ins, settings, SITE, signer)
    soap = envelope(
        "urn:ihe:iti:2007:ProvideAndRegisterDocumentSet-b",
        "https://dmp/repository",
        assertion,
        etree.Element("{urn:example}Body"),
    )
    found = etree.fromstring(soap).find(".//saml2:Assertion", NS)
    assert found is not None
    return etree.tostring(found)


def _config(algorithm: Algorithm) -> SignatureConfiguration:
    sha1 = algorithm == "rsa-sha1"
    return SignatureConfiguration(
        signature_methods=frozenset({SignatureMethod.RSA_SHA1 if sha1 else SignatureMethod.RSA_SHA256}),
        digest_algorithms=frozenset({DigestAlgorithm.SHA1 if sha1 else DigestAlgorithm.SHA256}),
    )


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_vihf_signature_verifies_against_the_ca(pki: Pki, algorithm: Algorithm) -> None:
    data = _assertion_in_envelope(pki, algorithm)
    result = XMLVerifier().verify(data, ca_pem_file=str(pki.ca_pem), expect_config=_config(algorithm))
    signed = result.signed_xml
    assert signed is not None and signed.findtext("saml2:Subject/saml2:NameID", namespaces=NS) == "899700367909"
    root = etree.fromstring(data)
    method = root.find("ds:Signature/ds:SignedInfo/ds:SignatureMethod", NS)
    digest = root.find("ds:Signature/ds:SignedInfo/ds:Reference/ds:DigestMethod", NS)
    assert method is not None and digest is not None
    assert (method.get("Algorithm"), digest.get("Algorithm")) == _URIS[algorithm]
    c14n = root.find("ds:Signature/ds:SignedInfo/ds:CanonicalizationMethod", NS)
    assert c14n is not None and c14n.get("Algorithm") == "http://www.w3.org/2001/10/xml-exc-c14n#"
    certificate = root.findtext("ds:Signature/ds:KeyInfo/ds:X509Data/ds:X509Certificate", namespaces=NS)
    assert certificate is not None
    assert x509.load_der_x509_certificate(base64.b64decode(certificate)) == pki.sign_certificate


def test_a_tampered_vihf_fails_verification(pki: Pki) -> None:
    data = _assertion_in_envelope(pki, "rsa-sha256").replace(b">899700367909<", b">899700000000<")
    with pytest.raises(InvalidDigest):
        XMLVerifier().verify(data, ca_pem_file=str(pki.ca_pem), expect_config=_config("rsa-sha256"))


def test_sha1_is_refused_unless_configured() -> None:
    """signxml 5 refuses SHA-1 by default; our signer lets it through only for rsa-sha1."""
    from signxml.signer import XMLSigner

    with pytest.raises(Exception, match="SHA1"):
        XMLSigner(signature_algorithm=SignatureMethod.RSA_SHA1, digest_algorithm=DigestAlgorithm.SHA1)
    assert DmpSigner("rsa-sha1").sign_alg == SignatureMethod.RSA_SHA1
    assert DmpSigner("rsa-sha256").digest_alg == DigestAlgorithm.SHA256


def _xades(pki: Pki, algorithm: Algorithm, documents: list[tuple[str, bytes]]) -> bytes:
    signer = load_identity(pki.sign_p12, SIGN_PASSWORD, "dmp.signature_pkcs12")
    submission = sample_submission()
    return submission_signature(
        signer, submission.signature_uid, SUBMISSION_UID, documents, submission.submitted_at, algorithm
    )


def _subtree_c14n(root: etree._Element, target: etree._Element, with_comments: bool = False) -> bytes:
    """C14N 1.0 of a subtree computed from the whole document's C14N, not from lxml's subtree C14N.

    lxml/libxml2 add a spurious `xmlns=""` to grandchildren of a subtree under a default namespace;
    at the root its C14N is right. These documents declare only default namespaces, so the subtree's
    canonical form is its slice of the document's, with the default namespace it inherits declared.
    """
    whole = etree.tostring(root, method="c14n", exclusive=False, with_comments=with_comments)
    qname = etree.QName(target)
    start_tag = f"<{qname.localname}".encode()
    start = whole.index(start_tag + (f' Id="{target.get("Id")}"'.encode() if target.get("Id") else b">"))
    end = whole.index(f"</{qname.localname}>".encode(), start) + len(f"</{qname.localname}>")
    piece = whole[start:end]
    if not piece.startswith(start_tag + b" xmlns="):
        piece = start_tag + f' xmlns="{qname.namespace}"'.encode() + piece[len(start_tag) :]
    return piece


def _by_id(root: etree._Element, value: str) -> etree._Element:
    found = root.xpath("//*[@Id=$id]", id=value)
    assert isinstance(found, list) and len(found) == 1 and isinstance(found[0], etree._Element)
    return found[0]


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_xades_signature_verifies_and_its_manifest_names_each_document(pki: Pki, algorithm: Algorithm) -> None:
    kos = KOS_FILE.read_bytes()
    report = b"<ClinicalDocument/>"
    kos_uid = sample_submission().manifest.sop_instance_uid
    data = _xades(pki, algorithm, [(kos_uid, kos), ("1.2.3^CR1", report)])
    root = etree.fromstring(data)
    signed_info = root.find("ds:SignedInfo", NS)
    assert signed_info is not None
    method_uri, digest_uri = _URIS[algorithm]
    assert signed_info.find("ds:SignatureMethod", NS).get("Algorithm") == method_uri  # type: ignore[union-attr]
    digest = hashes.SHA1() if algorithm == "rsa-sha1" else hashes.SHA256()
    for reference in signed_info.iterfind("ds:Reference", NS):
        assert reference.find("ds:DigestMethod", NS).get("Algorithm") == digest_uri  # type: ignore[union-attr]
        target = _by_id(root, reference.get("URI", "")[1:])
        # XMLDSig §4.3.3.3: a same-document reference without Transforms is C14N 1.0 without comments
        hasher = hashes.Hash(digest)
        hasher.update(_subtree_c14n(root, target))
        assert reference.findtext("ds:DigestValue", namespaces=NS) == base64.b64encode(hasher.finalize()).decode()
    signed = _subtree_c14n(root, signed_info, with_comments=True)
    assert b'xmlns=""' not in signed
    value = base64.b64decode(root.findtext("ds:SignatureValue", namespaces=NS) or "")
    public_key = pki.sign_certificate.public_key()
    assert isinstance(public_key, rsa.RSAPublicKey)
    public_key.verify(value, signed, padding.PKCS1v15(), digest)  # raises when wrong
    manifest = {r.get("URI"): r.findtext("ds:DigestValue", namespaces=NS) for r in _by_id(root, "IHEManifest")}
    assert manifest == {
        f"urn:oid:{SUBMISSION_UID}": "AA==",
        f"urn:oid:{kos_uid}": "WECMEWtRSXwPIITJDaPIXHCYRVo=",
        "urn:oid:1.2.3^CR1": base64.b64encode(hashlib.sha1(report).digest()).decode(),
    }
    cert_digest = root.findtext(".//xades:CertDigest/xades:DigestValue", namespaces=NS)
    der = pki.sign_certificate.public_bytes(serialization.Encoding.DER)
    hasher = hashes.Hash(digest)
    hasher.update(der)
    assert cert_digest == base64.b64encode(hasher.finalize()).decode()
    assert root.findtext(".//xades:IssuerSerial/ds:X509SerialNumber", namespaces=NS) == str(
        pki.sign_certificate.serial_number
    )


class _LaxVerifier(XMLVerifier):
    """signxml without its XSD check: the DMP wants Signature/@Id = the signature's OID, not an xs:ID.

    It runs with `excise_empty_xmlns_declarations`, since signxml canonicalises with lxml's subtree
    C14N (see `_subtree_c14n`); these documents have no element outside a namespace.
    """

    excise_empty_xmlns_declarations = True

    def validate_schema(self, signature: etree._Element) -> None:
        pass


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_xades_verifies_with_signxml_too(pki: Pki, algorithm: Algorithm) -> None:
    """A second, independent implementation of XMLDSig agrees with ours on both references."""
    data = _xades(pki, algorithm, [("1.2.3", b"document")])
    result = _LaxVerifier().verify(
        data, x509_cert=pki.sign_certificate, expect_config=_config(algorithm), expect_references=2
    )
    assert isinstance(result, list) and len(result) == 2


def test_tampered_xades_fails(pki: Pki) -> None:
    data = _xades(pki, "rsa-sha256", [("1.2.3", b"document")])
    forged = data.replace(manifest_digest(b"document").encode(), manifest_digest(b"forgery").encode())
    assert forged != data
    root = etree.fromstring(forged)
    reference = root.find("ds:SignedInfo/ds:Reference", NS)
    assert reference is not None
    hasher = hashes.Hash(hashes.SHA256())
    hasher.update(_subtree_c14n(root, _by_id(root, "IHEManifest")))
    assert reference.findtext("ds:DigestValue", namespaces=NS) != base64.b64encode(hasher.finalize()).decode()
    with pytest.raises(InvalidDigest):
        _LaxVerifier().verify(
            forged, x509_cert=pki.sign_certificate, expect_config=_config("rsa-sha256"), expect_references=2
        )


def test_the_fixture_kos_manifest_digest() -> None:
    assert manifest_digest(KOS_FILE.read_bytes()) == "WECMEWtRSXwPIITJDaPIXHCYRVo="


def test_a_wrong_key_does_not_verify(pki: Pki) -> None:
    data = _xades(pki, "rsa-sha1", [("1.2.3", b"document")])
    root = etree.fromstring(data)
    signed_info = root.find("ds:SignedInfo", NS)
    assert signed_info is not None
    signed = _subtree_c14n(root, signed_info, with_comments=True)
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
    with pytest.raises(InvalidSignature):
        other.verify(
            base64.b64decode(root.findtext("ds:SignatureValue", namespaces=NS) or ""),
            signed,
            padding.PKCS1v15(),
            hashes.SHA1(),
        )
