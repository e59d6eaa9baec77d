"""The XAdES signature of the submission set, sent as its own XDS document (DRIM-M §4.7).

An IHE DSG-style detached signature: a ds:Manifest names every document by `urn:oid:<uniqueId>`
with the SHA-1 of its bytes (the same SHA-1 as the XDS `hash` slot), and SignedInfo signs that
Manifest and the XAdES 1.1.1 SignedProperties. signxml cannot produce references it must not
dereference (`urn:oid:`), so this module computes the digests with lxml's C14N and hashlib and
signs SignedInfo with cryptography (see `canonical` for a libxml2 C14N defect worked around); tests
verify the result independently.
"""

from __future__ import annotations

import base64
import copy
import hashlib
from collections.abc import Sequence
from datetime import datetime
from typing import Literal

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding
from lxml import etree

from drimbox.dmp import codes
from drimbox.dmp.identity import Identity
from drimbox.dmp.soap import XML_DECLARATION

DS = "http://www.w3.org/2000/09/xmldsig#"
XADES = "http://uri.etsi.org/01903/v1.1.1#"
C14N_WITH_COMMENTS = "http://www.w3.org/TR/2001/REC-xml-c14n-20010315#WithComments"
MANIFEST_TYPE = "http://www.w3.org/2000/09/xmldsig#Manifest"
SIGNED_PROPERTIES_TYPE = "http://uri.etsi.org/01903/v1.1.1#SignedProperties"
MANIFEST_ID = "IHEManifest"
SIGNED_PROPERTIES_ID = "S0-SignedProperties"
#: DigestValue of the SubmissionSet's own Manifest reference: it has no bytes, the DMP sample writes 0x00.
NO_CONTENT_DIGEST = "AA=="

_ALGORITHMS = {
    "rsa-sha1": ("http://www.w3.org/2000/09/xmldsig#rsa-sha1", "http://www.w3.org/2000/09/xmldsig#sha1"),
    "rsa-sha256": (
        "http://www.w3.org/2001/04/xmldsig-more#rsa-sha256",
        "http://www.w3.org/2001/04/xmlenc#sha256",
    ),
}
SHA1_URI = _ALGORITHMS["rsa-sha1"][1]
_XML_ATTRIBUTE = "{http://www.w3.org/XML/1998/namespace}"


def manifest_digest(document: bytes) -> str:
    """base64(SHA-1(document)): the Manifest DigestValue the DMP compares with the entry's hash."""
    return base64.b64encode(hashlib.sha1(document).digest()).decode()


def submission_signature(
    signer: Identity,
    signature_uid: str,
    submission_uid: str,
    documents: Sequence[tuple[str, bytes]],
    signing_time: datetime,
    algorithm: Literal["rsa-sha1", "rsa-sha256"] = "rsa-sha1",
) -> bytes:
    """The signature document (UTF-8 XML bytes) over `documents`, given as (uniqueId, bytes)."""
    method_uri, digest_uri = _ALGORITHMS[algorithm]
    digest = hashes.SHA1() if algorithm == "rsa-sha1" else hashes.SHA256()
    root = etree.Element(_ds("Signature"), Id=signature_uid, nsmap={None: DS})
    signed_info = etree.SubElement(root, _ds("SignedInfo"))
    etree.SubElement(signed_info, _ds("CanonicalizationMethod"), Algorithm=C14N_WITH_COMMENTS)
    etree.SubElement(signed_info, _ds("SignatureMethod"), Algorithm=method_uri)
    manifest_value = _reference(signed_info, f"#{MANIFEST_ID}", MANIFEST_TYPE, digest_uri)
    properties_value = _reference(signed_info, f"#{SIGNED_PROPERTIES_ID}", SIGNED_PROPERTIES_TYPE, digest_uri)
    signature_value = etree.SubElement(root, _ds("SignatureValue"))
    x509 = etree.SubElement(etree.SubElement(root, _ds("KeyInfo")), _ds("X509Data"))
    der = signer.certificate.public_bytes(serialization.Encoding.DER)
    etree.SubElement(x509, _ds("X509Certificate")).text = base64.b64encode(der).decode()

    properties = etree.SubElement(etree.SubElement(root, _ds("Object")), _ds("SignatureProperties"))
    purpose = etree.SubElement(
        properties, _ds("SignatureProperty"), Id="purposeOfSignature", Target=f"#{signature_uid}"
    )
    purpose.text = codes.SIGNATURE_PURPOSE.code

    manifest = etree.SubElement(etree.SubElement(root, _ds("Object")), _ds("Manifest"), Id=MANIFEST_ID)
    _reference(manifest, f"urn:oid:{submission_uid}", None, SHA1_URI).text = NO_CONTENT_DIGEST
    for unique_id, data in documents:
        _reference(manifest, f"urn:oid:{unique_id}", None, SHA1_URI).text = manifest_digest(data)

    qualifying = etree.SubElement(
        etree.SubElement(root, _ds("Object")),
        _xades("QualifyingProperties"),
        Target=f"#{signature_uid}",
        nsmap={None: XADES},
    )
    signed_properties = etree.SubElement(qualifying, _xades("SignedProperties"), Id=SIGNED_PROPERTIES_ID)
    _signed_signature_properties(signed_properties, signer, signing_time, digest, digest_uri)
    etree.SubElement(signed_properties, _xades("SignedDataObjectProperties"))

    manifest_value.text = _digest(manifest, digest)
    properties_value.text = _digest(signed_properties, digest)
    signed = canonical(signed_info, with_comments=True)
    signature_value.text = base64.b64encode(signer.key.sign(signed, padding.PKCS1v15(), digest)).decode()
    return XML_DECLARATION + etree.tostring(root, encoding="UTF-8", xml_declaration=False)


def _signed_signature_properties(
    parent: etree._Element, signer: Identity, signing_time: datetime, digest: hashes.HashAlgorithm, digest_uri: str
) -> None:
    """SigningTime, SigningCertificate (CertDigest + IssuerSerial) and an implied policy (XAdES 1.1.1).

    In XAdES 1.1.1 CertDigest's DigestMethod/DigestValue are XAdES elements; IssuerSerial's children
    are XMLDSig ones, as the DMP sample has them.
    """
    properties = etree.SubElement(parent, _xades("SignedSignatureProperties"))
    moment = signing_time.astimezone().isoformat(timespec="milliseconds")
    etree.SubElement(properties, _xades("SigningTime")).text = moment
    cert = etree.SubElement(etree.SubElement(properties, _xades("SigningCertificate")), _xades("Cert"))
    cert_digest = etree.SubElement(cert, _xades("CertDigest"))
    etree.SubElement(cert_digest, _xades("DigestMethod"), Algorithm=digest_uri)
    der = signer.certificate.public_bytes(serialization.Encoding.DER)
    hasher = hashes.Hash(digest)
    hasher.update(der)
    etree.SubElement(cert_digest, _xades("DigestValue")).text = base64.b64encode(hasher.finalize()).decode()
    issuer_serial = etree.SubElement(cert, _xades("IssuerSerial"))
    etree.SubElement(issuer_serial, _ds("X509IssuerName"), nsmap={None: DS}).text = signer.issuer_dn
    serial = etree.SubElement(issuer_serial, _ds("X509SerialNumber"), nsmap={None: DS})
    serial.text = str(signer.certificate.serial_number)
    policy = etree.SubElement(properties, _xades("SignaturePolicyIdentifier"))
    etree.SubElement(policy, _xades("SignaturePolicyImplied"))


def _reference(parent: etree._Element, uri: str, kind: str | None, digest_uri: str) -> etree._Element:
    """A ds:Reference without Transforms; returns its (empty) DigestValue to fill in."""
    reference = etree.SubElement(parent, _ds("Reference"), {"Type": kind} if kind else {})
    reference.set("URI", uri)
    etree.SubElement(reference, _ds("DigestMethod"), Algorithm=digest_uri)
    return etree.SubElement(reference, _ds("DigestValue"))


def _digest(node: etree._Element, digest: hashes.HashAlgorithm) -> str:
    """A same-document reference without Transforms: inclusive C14N 1.0 without comments (XMLDSig §4.3.3.3)."""
    hasher = hashes.Hash(digest)
    hasher.update(canonical(node, with_comments=False))
    return base64.b64encode(hasher.finalize()).decode()


def canonical(node: etree._Element, *, with_comments: bool) -> bytes:
    """Inclusive C14N 1.0 of the subtree at `node`, with its in-scope namespaces and inherited xml:* attributes.

    lxml 6.1 / libxml2 2.14 canonicalise a non-root subtree wrongly when a default namespace is
    declared above it: grandchildren get a spurious `xmlns=""`, which any other verifier (the DMP's
    Java one) would not reproduce. Canonicalising a root copy that declares everything in scope avoids it.
    """
    clone = etree.Element(node.tag, nsmap=node.nsmap)
    for ancestor in node.iterancestors():
        for name, value in ancestor.attrib.items():
            if name.startswith(_XML_ATTRIBUTE) and name not in clone.attrib:
                clone.set(name, value)
    for name, value in node.attrib.items():
        clone.set(name, value)
    copied = copy.deepcopy(node)
    clone.text = copied.text
    for child in list(copied):
        clone.append(child)
    return etree.tostring(clone, method="c14n", exclusive=False, with_comments=with_comments)


def _ds(tag: str) -> str:
    return f"{{{DS}}}{tag}"


def _xades(tag: str) -> str:
    return f"{{{XADES}}}{tag}"
