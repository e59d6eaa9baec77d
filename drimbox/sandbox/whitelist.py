"""A sandbox ANS: signs whitelists the way the ANS does, and publishes them over HTTP(S).

The signed shape copies the genuine test list byte for byte where it matters (XAdES-BASELINE-B
enveloped signature, `Reference URI=""` with XPath Filter 2.0 subtracting the signature, exclusive
c14n, RSA-SHA256, SHA-256, SigningCertificateV2 with a SHA-512 digest, X509Data = signer,
intermediate, root), so the verifier the box runs in production is the one the demo and the tests
exercise. The signer is the sandbox PKI's "Liste Blanche DRIM-M" certificate unless a test passes
another key and certificate (a forger, an expired signer).
"""

from __future__ import annotations

import base64
import hashlib
import secrets
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from lxml import etree
from starlette.types import Receive, Scope, Send

from drimbox.sandbox.http import Served, serve_in_thread
from drimbox.sandbox.pki import PkiFiles, load_certificates
from drimbox.whitelist.content import NS
from drimbox.whitelist.model import Domain
from drimbox.whitelist.xmldsig import DS, EXC_C14N, FILTER2, XADES, canonicalize

_SHA256 = "http://www.w3.org/2001/04/xmlenc#sha256"
_SHA512 = "http://www.w3.org/2001/04/xmlenc#sha512"
_RSA_SHA256 = "http://www.w3.org/2001/04/xmldsig-more#rsa-sha256"
_FIELDS = (("Identifiant", "identifier"), ("db", "db"), ("vi", "vi"), ("Denomination", "denomination"),
           ("DNCertificatOperateur", "operator_dn"), ("SupportContact", "support_contact"),
           ("DateMAJ", "updated_at"))  # fmt: skip


def sign_whitelist(
    domains: Sequence[Domain | Mapping[str, Any]],
    pki: PkiFiles,
    generated_at: datetime,
    *,
    key: rsa.RSAPrivateKey | None = None,
    cert: x509.Certificate | None = None,
    signing_time: datetime | None = None,
) -> bytes:
    """A signed `ListeBlancheDRIM-M` of `domains` (Domain objects or dicts with the same field names)."""
    signer_key = key if key is not None else _load_key(pki)
    signer = cert if cert is not None else load_certificates(pki.whitelist_cert)[0]
    intermediate, root_ca = load_certificates(pki.intermediate_cert)[0], load_certificates(pki.root_cert)[0]
    chain = [signer, intermediate, root_ca] if signer.issuer == intermediate.subject else [signer]
    document = _document(domains, generated_at)
    list_digest = _digest(canonicalize(document, EXC_C14N, comments=False), "sha256")
    ident = "id-" + secrets.token_hex(16)
    signature = etree.SubElement(document, f"{{{DS}}}Signature", Id=ident, nsmap={"ds": DS})
    signed_info = _el(signature, "SignedInfo")
    _el(signed_info, "CanonicalizationMethod", Algorithm=EXC_C14N)
    _el(signed_info, "SignatureMethod", Algorithm=_RSA_SHA256)
    first = _el(signed_info, "Reference", Id=f"r-{ident}-1", URI="")
    transforms = _el(first, "Transforms")
    subtract = _el(transforms, "Transform", Algorithm=FILTER2)
    xpath = etree.SubElement(subtract, f"{{{FILTER2}}}XPath", Filter="subtract", nsmap={"dsig-filter2": FILTER2})
    xpath.text = "/descendant::ds:Signature"
    _el(transforms, "Transform", Algorithm=EXC_C14N)
    _el(first, "DigestMethod", Algorithm=_SHA256)
    _el(first, "DigestValue").text = list_digest
    second = _el(signed_info, "Reference", Type="http://uri.etsi.org/01903#SignedProperties", URI=f"#xades-{ident}")
    _el(_el(second, "Transforms"), "Transform", Algorithm=EXC_C14N)
    _el(second, "DigestMethod", Algorithm=_SHA256)
    second_value = _el(second, "DigestValue")
    value = _el(signature, "SignatureValue", Id=f"value-{ident}")
    data = _el(_el(signature, "KeyInfo"), "X509Data")
    for certificate in chain:
        _el(data, "X509Certificate").text = _b64(certificate.public_bytes(serialization.Encoding.DER))
    properties = _signed_properties(signature, ident, signer, signing_time or datetime.now(UTC))
    second_value.text = _digest(canonicalize(properties, EXC_C14N, comments=False), "sha256")
    octets = canonicalize(signed_info, EXC_C14N, comments=True)
    value.text = _b64(signer_key.sign(octets, padding.PKCS1v15(), hashes.SHA256()))
    declaration = b'<?xml version="1.0" encoding="UTF-8" standalone="no"?>'
    return declaration + etree.tostring(document, encoding="UTF-8", xml_declaration=False)


class ListPublisher:
    """An ASGI app serving whatever the test sets in `body` (with `status`), counting the hits."""

    def __init__(self, body: bytes = b"", status: int = 200) -> None:
        self.body = body
        self.status = status
        self.hits = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        self.hits += 1
        body = self.body
        headers = [(b"content-type", b"application/xml"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": self.status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def publish_whitelist(publisher: ListPublisher, pki: PkiFiles | None = None) -> tuple[str, Served]:
    """Serve `publisher` on 127.0.0.1 (HTTPS with the sandbox server certificate when `pki`);
    returns the list's URL and the server (call `.stop()`)."""
    served = serve_in_thread(
        publisher, certfile=pki.server_cert if pki else None, keyfile=pki.server_key if pki else None
    )
    scheme = "https" if pki else "http"
    return f"{scheme}://127.0.0.1:{served.port}/liste-blanche/LISTEBLANCHE_DRIM-M.xml", served


# -- document ------------------------------------------------------------------------------------


def _document(domains: Sequence[Domain | Mapping[str, Any]], generated_at: datetime) -> etree._Element:
    root = etree.Element(f"{{{NS}}}ListeBlancheDRIM-M", versionFormat="1.0.0", nsmap={None: NS})
    root.text = "\n    "
    generated = etree.SubElement(root, f"{{{NS}}}DateDeGeneration")
    generated.text, generated.tail = _iso(generated_at), "\n    "
    listing = etree.SubElement(root, f"{{{NS}}}ListeDomaines")
    listing.text, listing.tail = "\n        ", "\n"
    for position, domain in enumerate(domains):
        node = etree.SubElement(listing, f"{{{NS}}}Domaine")
        node.text = "\n            "
        node.tail = "\n        " if position < len(domains) - 1 else "\n    "
        for index, (tag, name) in enumerate(_FIELDS):
            child = etree.SubElement(node, f"{{{NS}}}{tag}")
            child.text = _field(domain, name)
            child.tail = "\n            " if index < len(_FIELDS) - 1 else "\n        "
    return root


def _field(domain: Domain | Mapping[str, Any], name: str) -> str:
    value = domain.get(name, "") if isinstance(domain, Mapping) else getattr(domain, name)
    if isinstance(value, datetime):
        return _iso(value)
    return "" if value is None else str(value)


def _signed_properties(
    signature: etree._Element, ident: str, signer: x509.Certificate, signing_time: datetime
) -> etree._Element:
    holder = _el(signature, "Object")
    qualifying = etree.SubElement(holder, f"{{{XADES}}}QualifyingProperties", Target=f"#{ident}",
                                  nsmap={"xades": XADES})  # fmt: skip
    properties = etree.SubElement(qualifying, f"{{{XADES}}}SignedProperties", Id=f"xades-{ident}")
    signed = etree.SubElement(properties, f"{{{XADES}}}SignedSignatureProperties")
    etree.SubElement(signed, f"{{{XADES}}}SigningTime").text = _iso(signing_time)
    cert = etree.SubElement(etree.SubElement(signed, f"{{{XADES}}}SigningCertificateV2"), f"{{{XADES}}}Cert")
    digest = etree.SubElement(cert, f"{{{XADES}}}CertDigest")
    _el(digest, "DigestMethod", Algorithm=_SHA512)
    _el(digest, "DigestValue").text = _digest(signer.public_bytes(serialization.Encoding.DER), "sha512")
    etree.SubElement(cert, f"{{{XADES}}}IssuerSerialV2").text = _b64(_issuer_serial(signer))
    objects = etree.SubElement(properties, f"{{{XADES}}}SignedDataObjectProperties")
    data_format = etree.SubElement(objects, f"{{{XADES}}}DataObjectFormat", ObjectReference=f"#r-{ident}-1")
    etree.SubElement(data_format, f"{{{XADES}}}MimeType").text = "text/xml"
    return properties


def _issuer_serial(cert: x509.Certificate) -> bytes:
    """DER of RFC 5035 IssuerSerial { GeneralNames { directoryName issuer }, serialNumber }."""
    serial = cert.serial_number.to_bytes(cert.serial_number.bit_length() // 8 + 1, "big")
    general_names = _der(0x30, _der(0xA4, cert.issuer.public_bytes()))
    return _der(0x30, general_names + _der(0x02, serial))


def _der(tag: int, content: bytes) -> bytes:
    size = len(content)
    if size < 0x80:
        return bytes([tag, size]) + content
    length = size.to_bytes((size.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(length)]) + length + content


def _el(parent: etree._Element, name: str, **attributes: str) -> etree._Element:
    return etree.SubElement(parent, f"{{{DS}}}{name}", attrib=attributes)


def _digest(octets: bytes, algorithm: str) -> str:
    return _b64(hashlib.new(algorithm, octets).digest())


def _b64(octets: bytes) -> str:
    return base64.b64encode(octets).decode("ascii")


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _load_key(pki: PkiFiles) -> rsa.RSAPrivateKey:
    key = serialization.load_pem_private_key(pki.whitelist_key.read_bytes(), password=None)
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ValueError(f"{pki.whitelist_key} is not an RSA key")
    return key
