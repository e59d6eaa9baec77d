"""Enveloped XMLDSig/XAdES verification for the ANS whitelist, with lxml and cryptography only.

The ANS signs the list with XAdES-BASELINE-B: a `Reference URI=""` whose transforms are XPath
Filter 2.0 ("subtract" the signature) then exclusive c14n, and a second reference to the XAdES
`SignedProperties`. signxml does not implement Filter 2.0 and xmlsec is not installed, so the
references are recomputed here, applying exactly the transforms the signature lists (a short,
closed set; anything else is refused rather than guessed). Canonicalisation of a subtree goes
through a standalone copy of it: lxml 6.1's c14n of a subtree under a default namespace is buggy.

The content the box then reads is taken from the very tree whose digest was checked (the document
minus its signature), so nothing outside the signed bytes can slip into the list.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Callable
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from lxml import etree

from drimbox.errors import WhitelistRefused

DS = "http://www.w3.org/2000/09/xmldsig#"
XADES = "http://uri.etsi.org/01903/v1.3.2#"
FILTER2 = "http://www.w3.org/2002/06/xmldsig-filter2"
ENVELOPED = DS + "enveloped-signature"
EXC_C14N = "http://www.w3.org/2001/10/xml-exc-c14n#"
C14N = "http://www.w3.org/TR/2001/REC-xml-c14n-20010315"
_C14N_METHODS = {EXC_C14N, EXC_C14N + "WithComments", C14N, C14N + "#WithComments"}
DIGESTS: dict[str, Callable[[bytes], bytes]] = {
    "http://www.w3.org/2001/04/xmlenc#sha256": lambda octets: hashlib.sha256(octets).digest(),
    "http://www.w3.org/2001/04/xmldsig-more#sha384": lambda octets: hashlib.sha384(octets).digest(),
    "http://www.w3.org/2001/04/xmlenc#sha512": lambda octets: hashlib.sha512(octets).digest(),
}
_SIGNATURE_METHODS: dict[str, hashes.HashAlgorithm] = {
    "http://www.w3.org/2001/04/xmldsig-more#rsa-sha256": hashes.SHA256(),
    "http://www.w3.org/2001/04/xmldsig-more#rsa-sha384": hashes.SHA384(),
    "http://www.w3.org/2001/04/xmldsig-more#rsa-sha512": hashes.SHA512(),
}


@dataclass(frozen=True)
class CheckedSignature:
    """What a cryptographically sound signature gives: the signed content, the certificate whose
    key signed, the other certificates it carries, and the XAdES properties it covers (if any)."""

    content: etree._Element
    signer: x509.Certificate
    others: list[x509.Certificate]
    signed_properties: etree._Element | None


def check_signature(data: bytes) -> CheckedSignature:
    """Check digests and signature value of the enveloped signature; trust is decided elsewhere."""
    tree = parse_safely(data)
    signature = _the_signature(tree.getroot())
    signed_info = _child(signature, "SignedInfo")
    c14n_method = _algorithm(_child(signed_info, "CanonicalizationMethod"), _C14N_METHODS, "canonicalization")
    hash_algorithm = _SIGNATURE_METHODS.get(_child(signed_info, "SignatureMethod").get("Algorithm", ""))
    if hash_algorithm is None:
        method = _child(signed_info, "SignatureMethod").get("Algorithm")
        raise WhitelistRefused(f"signature method {method} refused: only RSA with SHA-256/384/512 is accepted")
    references = signed_info.findall(f"{{{DS}}}Reference")
    content: etree._Element | None = None
    signed_properties: etree._Element | None = None
    for reference in references:
        uri = reference.get("URI")
        if uri == "":
            if content is not None:
                raise WhitelistRefused("the signature references the whole list twice")
            content = _check_document_reference(data, reference)
        elif uri is not None and uri.startswith("#"):
            target = _check_local_reference(tree.getroot(), signature, reference, uri[1:])
            if target.tag == f"{{{XADES}}}SignedProperties":
                signed_properties = target
        else:
            raise WhitelistRefused(
                f"the signature references {uri!r}: only the list itself and its own parts are allowed"
            )
    if content is None:
        raise WhitelistRefused('the signature does not cover the list (no Reference URI="")')
    octets = canonicalize(signed_info, c14n_method, comments=True)
    value = _base64(_child(signature, "SignatureValue").text, "SignatureValue")
    certificates = _certificates(signature)
    signer = _signing_certificate(certificates, value, octets, hash_algorithm)
    others = [cert for cert in certificates if cert is not signer]
    return CheckedSignature(content=content, signer=signer, others=others, signed_properties=signed_properties)


def parse_safely(data: bytes) -> etree._ElementTree:
    """Parse without DTD, entities or network: the list comes from the network."""
    if b"<!DOCTYPE" in data or b"<!ENTITY" in data:
        raise WhitelistRefused("the list carries a DOCTYPE or entity declaration, refused")
    parser = etree.XMLParser(
        resolve_entities=False, no_network=True, huge_tree=False, load_dtd=False, remove_blank_text=False
    )
    try:
        tree = etree.ElementTree(etree.fromstring(data, parser))
    except etree.XMLSyntaxError as error:
        raise WhitelistRefused(f"the list is not well-formed XML: {error}") from None
    if tree.docinfo.doctype or tree.docinfo.internalDTD is not None:
        raise WhitelistRefused("the list carries a DOCTYPE, refused")
    return tree


def canonicalize(
    element: etree._Element, algorithm: str, *, comments: bool, prefixes: list[str] | None = None
) -> bytes:
    """c14n of `element` as a standalone document (sidesteps lxml's subtree c14n bug).

    `comments` is False for references (a same-document URI drops comments whatever the method).
    """
    standalone = etree.fromstring(etree.tostring(element, with_tail=False), _plain_parser())
    return etree.tostring(
        standalone,
        method="c14n",
        exclusive=algorithm.startswith(EXC_C14N),
        with_comments=comments and algorithm.endswith("WithComments"),
        inclusive_ns_prefixes=prefixes or None,
    )


def remove_keeping_tail(element: etree._Element) -> None:
    """Drop an element but not the text after it (lxml keeps that text in the element's tail)."""
    parent = element.getparent()
    if parent is None:
        raise WhitelistRefused("cannot remove the root element")
    tail, previous = element.tail, element.getprevious()
    parent.remove(element)
    if tail:
        if previous is not None:
            previous.tail = (previous.tail or "") + tail
        else:
            parent.text = (parent.text or "") + tail


# -- references ----------------------------------------------------------------------------------


def _check_document_reference(data: bytes, reference: etree._Element) -> etree._Element:
    """Recompute the URI="" reference on a fresh parse and return that (signed) tree's root."""
    tree = parse_safely(data)
    root = tree.getroot()
    signature = _the_signature(root)
    transforms = _transforms(reference)
    removed = False
    method = C14N
    prefixes: list[str] | None = None
    for position, transform in enumerate(transforms):
        algorithm = transform.get("Algorithm", "")
        if algorithm in _C14N_METHODS:
            if position != len(transforms) - 1:
                raise WhitelistRefused("a canonicalization transform must come last")
            method, prefixes = algorithm, _prefix_list(transform)
        elif algorithm == ENVELOPED:
            removed = True
        elif algorithm == FILTER2:
            _check_filter(tree, transform, signature)
            removed = True
        else:
            raise WhitelistRefused(f"unsupported transform {algorithm!r} in the signature of the list")
    if not removed:
        raise WhitelistRefused("the reference to the list does not exclude its own signature")
    remove_keeping_tail(signature)
    octets = etree.tostring(
        tree, method="c14n", exclusive=method.startswith(EXC_C14N), with_comments=False,
        inclusive_ns_prefixes=prefixes,
    )  # fmt: skip
    if not _digest_matches(reference, octets):
        raise WhitelistRefused("digest of the list does not match its signature: the list was altered")
    return root


def _check_filter(tree: etree._ElementTree, transform: etree._Element, signature: etree._Element) -> None:
    """Accept an XPath Filter 2.0 transform only if it subtracts exactly the signature."""
    paths = transform.findall(f"{{{FILTER2}}}XPath")
    if len(paths) != 1 or paths[0].get("Filter") != "subtract":
        raise WhitelistRefused("only an XPath Filter 2.0 'subtract' of the signature is accepted")
    namespaces = {prefix: uri for prefix, uri in paths[0].nsmap.items() if prefix}
    try:
        selected = tree.xpath((paths[0].text or "").strip(), namespaces=namespaces)
    except etree.XPathError as error:
        raise WhitelistRefused(f"the signature's XPath filter cannot be evaluated: {error}") from None
    if not isinstance(selected, list) or len(selected) != 1 or selected[0] is not signature:
        raise WhitelistRefused("the signature's XPath filter removes more than the signature: refused")


def _check_local_reference(
    root: etree._Element, signature: etree._Element, reference: etree._Element, identifier: str
) -> etree._Element:
    targets = root.xpath("//*[@Id=$v or @ID=$v or @id=$v]", v=identifier)
    if not isinstance(targets, list) or len(targets) != 1 or not isinstance(targets[0], etree._Element):
        raise WhitelistRefused(f"the signature's reference #{identifier} does not name exactly one element")
    target = targets[0]
    if signature not in target.iterancestors():
        raise WhitelistRefused(f"the signature's reference #{identifier} points outside the signature")
    transforms = _transforms(reference)
    method, prefixes = C14N, None
    if transforms:
        if len(transforms) != 1 or transforms[0].get("Algorithm") not in _C14N_METHODS:
            raise WhitelistRefused(f"unsupported transforms on the reference #{identifier}")
        method, prefixes = transforms[0].get("Algorithm", C14N), _prefix_list(transforms[0])
    if not _digest_matches(reference, canonicalize(target, method, comments=False, prefixes=prefixes)):
        raise WhitelistRefused(f"digest of #{identifier} does not match the signature: the signature was altered")
    return target


def _digest_matches(reference: etree._Element, octets: bytes) -> bool:
    digest = DIGESTS.get(_child(reference, "DigestMethod").get("Algorithm", ""))
    if digest is None:
        method = _child(reference, "DigestMethod").get("Algorithm")
        raise WhitelistRefused(f"digest method {method} refused: only SHA-256/384/512 are accepted")
    expected = _base64(_child(reference, "DigestValue").text, "DigestValue")
    return hmac.compare_digest(digest(octets), expected)


def _transforms(reference: etree._Element) -> list[etree._Element]:
    holder = reference.find(f"{{{DS}}}Transforms")
    return [] if holder is None else holder.findall(f"{{{DS}}}Transform")


def _prefix_list(transform: etree._Element) -> list[str] | None:
    inclusive = transform.find(f"{{{EXC_C14N}}}InclusiveNamespaces")
    if inclusive is None:
        return None
    return [("" if prefix == "#default" else prefix) for prefix in inclusive.get("PrefixList", "").split()]


# -- signature value and certificates ------------------------------------------------------------


def _certificates(signature: etree._Element) -> list[x509.Certificate]:
    certificates = []
    for node in signature.iterfind(f"{{{DS}}}KeyInfo/{{{DS}}}X509Data/{{{DS}}}X509Certificate"):
        try:
            certificates.append(x509.load_der_x509_certificate(_base64(node.text, "X509Certificate")))
        except ValueError:
            raise WhitelistRefused("the signature carries an unreadable X509Certificate") from None
    if not certificates:
        raise WhitelistRefused("the signature carries no X509Data certificate: the signer cannot be known")
    return certificates


def _signing_certificate(
    certificates: list[x509.Certificate], value: bytes, octets: bytes, algorithm: hashes.HashAlgorithm
) -> x509.Certificate:
    """The carried certificate whose key made the signature (the others are its chain)."""
    for cert in certificates:
        key = cert.public_key()
        if not isinstance(key, rsa.RSAPublicKey):
            continue
        try:
            key.verify(value, octets, padding.PKCS1v15(), algorithm)
        except InvalidSignature:
            continue
        return cert
    raise WhitelistRefused(
        "the signature does not verify with any certificate it carries: the list's signature was altered or forged"
    )


# -- small helpers -------------------------------------------------------------------------------


def _the_signature(root: etree._Element) -> etree._Element:
    signatures = list(root.iter(f"{{{DS}}}Signature"))
    if not signatures:
        raise WhitelistRefused("no signature: the list is unsigned")
    if len(signatures) != 1 or signatures[0].getparent() is not root:
        raise WhitelistRefused("the list must carry exactly one ds:Signature, as a child of its root element")
    return signatures[0]


def _child(parent: etree._Element, name: str) -> etree._Element:
    children = parent.findall(f"{{{DS}}}{name}")
    if len(children) != 1:
        raise WhitelistRefused(f"the signature must have exactly one ds:{name} (found {len(children)})")
    return children[0]


def _algorithm(element: etree._Element, allowed: set[str], what: str) -> str:
    algorithm = element.get("Algorithm", "")
    if algorithm not in allowed:
        raise WhitelistRefused(f"unsupported {what} method {algorithm!r} in the signature")
    return algorithm


def _base64(text: str | None, what: str) -> bytes:
    try:
        return base64.b64decode("".join((text or "").split()), validate=True)
    except (binascii.Error, ValueError):
        raise WhitelistRefused(f"the signature's {what} is not base64") from None


def _plain_parser() -> etree.XMLParser:
    return etree.XMLParser(resolve_entities=False, no_network=True, huge_tree=False, load_dtd=False)
