"""The sandbox DMP over real mutual TLS: a valid ITI-41 built from the DMP-accepted fixture is
registered and found again; each rule the DMP enforces, broken in turn, gets its Failure code or
SOAP Fault; RPLC, ITI-57, TD0.2/TD0.3, fault modes and restarts behave as the product expects.

The request builder below stands for the product's client but shares no code with it or with the
sandbox: it edits the fixture envelope, re-signs the VIHF (exc-c14n, enveloped) and writes the
XAdES signature document with lxml's C14N and cryptography directly.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import re
import ssl
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from io import BytesIO
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from hypothesis import given, settings
from hypothesis import strategies as st
from lxml import etree
from pydicom import dcmread
from pydicom.uid import UID, generate_uid

from drimbox.sandbox.dmp import APPROVED, DELETED, DEPRECATED, DmpSandbox
from drimbox.sandbox.dmp.answers import Fault
from drimbox.sandbox.dmp.envelope import read_envelope
from drimbox.sandbox.dmp.mtom import read_message
from drimbox.sandbox.dmp.query import parse_values
from drimbox.sandbox.pki import OrganisationFiles, PkiFiles, create_pki, issue_organisation, load_certificates, revoke

FIXTURES = Path(__file__).parents[1] / "fixtures" / "drim-m"
STRUCTURE = "499700367909006"
INS = "162018885045327"
PATIENT = f"{INS}^^^&1.2.250.1.213.1.4.10&ISO^NH"
OTHER_INS = "279035121518989"

NS = {
    "soap": "http://www.w3.org/2003/05/soap-envelope",
    "wsa": "http://www.w3.org/2005/08/addressing",
    "wsse": "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd",
    "saml2": "urn:oasis:names:tc:SAML:2.0:assertion",
    "ds": "http://www.w3.org/2000/09/xmldsig#",
    "rim": "urn:oasis:names:tc:ebxml-regrep:xsd:rim:3.0",
    "rs": "urn:oasis:names:tc:ebxml-regrep:xsd:rs:3.0",
    "lcm": "urn:oasis:names:tc:ebxml-regrep:xsd:lcm:3.0",
    "query": "urn:oasis:names:tc:ebxml-regrep:xsd:query:3.0",
    "xdsb": "urn:ihe:iti:xds-b:2007",
    "xop": "http://www.w3.org/2004/08/xop/include",
    "hl7": "urn:hl7-org:v3",
    "xades": "http://uri.etsi.org/01903/v1.1.1#",
}
ALGORITHMS = {
    "sha1": ("http://www.w3.org/2000/09/xmldsig#rsa-sha1", "http://www.w3.org/2000/09/xmldsig#sha1", hashes.SHA1),
    "sha256": (
        "http://www.w3.org/2001/04/xmldsig-more#rsa-sha256",
        "http://www.w3.org/2001/04/xmlenc#sha256",
        hashes.SHA256,
    ),
}
ITI41 = "urn:ihe:iti:2007:ProvideAndRegisterDocumentSet-b"
ITI18 = "urn:ihe:iti:2007:RegistryStoredQuery"
ITI57 = "urn:ihe:iti:2010:UpdateDocumentSet"
ITI43 = "urn:ihe:iti:2007:RetrieveDocumentSet"
TD02 = "urn:hl7-org:v3:PRPA_IN201307UV02"
TD03 = "urn:si-dmp-habilitations:HabilitationsEndPoint:setAuthorization"
FIND_DOCUMENTS = "urn:uuid:14d4debf-8f97-4251-9a74-a90016b0af0d"
FIND_BY_REFERENCE = "urn:uuid:12941a89-e02e-4be5-967c-ce4bfc8fe492"
GET_DOCUMENTS = "urn:uuid:5c4f972b-d56b-40ac-a5fc-c8ca9b40b9d4"
UNIQUE_ID_SCHEME = "urn:uuid:2e82c1f6-a085-4c72-9da3-8640a32e42ab"


def x(element: etree._Element, path: str) -> etree._Element:
    found = element.xpath(path, namespaces=NS)
    assert isinstance(found, list) and len(found) == 1, f"{path}: {found!r}"
    result = found[0]
    assert isinstance(result, etree._Element)
    return result


# -- the test's own client: signer, VIHF, XAdES, MTOM --------------------------------------------


@dataclass(frozen=True)
class Signer:
    key: rsa.RSAPrivateKey
    cert: x509.Certificate

    @classmethod
    def of(cls, org: OrganisationFiles) -> Signer:
        key = serialization.load_pem_private_key(org.signature_key.read_bytes(), password=None)
        assert isinstance(key, rsa.RSAPrivateKey)
        return cls(key, load_certificates(org.signature_cert)[0])

    @property
    def dn(self) -> str:
        """The Java-style DN of the samples: `CN=DRIMbox, OU=…, O=…, C=FR`."""
        return java_dn(self.cert.subject)

    def sign(self, data: bytes, algorithm: str) -> str:
        signature = self.key.sign(data, padding.PKCS1v15(), ALGORITHMS[algorithm][2]())
        return base64.b64encode(signature).decode()

    @property
    def der64(self) -> str:
        return base64.b64encode(self.cert.public_bytes(serialization.Encoding.DER)).decode()


def java_dn(name: x509.Name) -> str:
    return ", ".join(f"{a.rfc4514_attribute_name}={a.value!s}" for a in reversed(list(name)))


def c14n(element: etree._Element, *, comments: bool = False) -> bytes:
    """Inclusive C14N 1.0 of a subtree, serialised alone first: libxml2 2.14 writes `xmlns=""` on
    grandchildren of a subtree whose default namespace is declared above it."""
    return bytes(
        etree.tostring(
            etree.fromstring(etree.tostring(element, with_tail=False)), method="c14n", with_comments=comments
        )
    )


def digest(data: bytes, algorithm: str) -> str:
    return base64.b64encode(hashlib.new(algorithm, data).digest()).decode()


def fixture_envelope() -> etree._Element:
    raw = (FIXTURES / "xds-provide-and-register-example.xml").read_bytes()
    start = raw.index(b"<?xml")
    return etree.fromstring(raw[start : raw.index(b"--MIMEBoundary_Bound", start)].strip())


FIXTURE = fixture_envelope()


def vihf(
    security: etree._Element,
    signer: Signer,
    *,
    patient: str = PATIENT,
    structure: str = STRUCTURE,
    algorithm: str = "sha1",
    attributes: dict[str, str | None] | None = None,
    issuer: str | None = None,
) -> etree._Element:
    """The fixture's VIHF with this box's values, put in `security` and signed there (enveloped,
    exc-c14n) by `signer`. Signed in place because lxml re-maps namespace prefixes when an element
    moves into another tree, which changes the canonical form of a signature made before."""
    assertion = copy.deepcopy(x(FIXTURE, "//saml2:Assertion"))
    assertion.set("ID", f"_{uuid.uuid4()}")
    assertion.set("IssueInstant", datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"))
    x(assertion, "saml2:Issuer").text = issuer if issuer is not None else signer.dn
    values = {
        "Identifiant_Structure": structure,
        "LPS_ID": "drimbox-tests",
        "LPS_Nom": "DRIMbox",
        "LPS_ID_HOMOLOGATION_DMP": "SANDBOX-0001",
        "LPS_Version": "0.1",
        "urn:oasis:names:tc:xacml:2.0:resource:resource-id": patient,
    } | (attributes or {})
    for name, value in values.items():
        found = assertion.xpath(f"saml2:AttributeStatement/saml2:Attribute[@Name='{name}']", namespaces=NS)
        if value is None:
            found[0].getparent().remove(found[0])
        else:
            x(found[0], "saml2:AttributeValue").text = value
    for old in list(security):
        security.remove(old)
    security.append(assertion)
    return sign_vihf(assertion, signer, algorithm)


def sign_vihf(assertion: etree._Element, signer: Signer, algorithm: str = "sha1") -> etree._Element:
    signature_method, digest_method, _ = ALGORITHMS[algorithm]
    signature = x(assertion, "ds:Signature")
    x(signature, "ds:SignedInfo/ds:SignatureMethod").set("Algorithm", signature_method)
    x(signature, "ds:SignedInfo/ds:Reference").set("URI", f"#{assertion.get('ID')}")
    x(signature, "ds:SignedInfo/ds:Reference/ds:DigestMethod").set("Algorithm", digest_method)
    unsigned = copy.deepcopy(assertion)
    enveloped = x(unsigned, "ds:Signature")
    previous = enveloped.getprevious()
    assert previous is not None
    previous.tail = (previous.tail or "") + (enveloped.tail or "")  # the enveloped transform keeps the text around
    unsigned.remove(enveloped)
    x(signature, "ds:SignedInfo/ds:Reference/ds:DigestValue").text = digest(
        etree.tostring(unsigned, method="c14n", exclusive=True), algorithm
    )
    signed_info = etree.tostring(x(signature, "ds:SignedInfo"), method="c14n", exclusive=True)
    x(signature, "ds:SignatureValue").text = signer.sign(signed_info, algorithm)
    x(signature, "ds:KeyInfo/ds:X509Data/ds:X509Certificate").text = signer.der64
    return assertion


def xades(
    signer: Signer,
    signature_uid: str,
    set_uid: str,
    documents: dict[str, bytes],
    algorithm: str = "sha1",
    tamper: Callable[[etree._Element], None] | None = None,
) -> bytes:
    """An enveloping XAdES 1.1.1 signature of the submission set, as the fixture's Signature01 part."""
    signature_method, digest_method, _ = ALGORITHMS[algorithm]
    ds, xa = f"{{{NS['ds']}}}", f"{{{NS['xades']}}}"  # Clark prefixes
    root = etree.Element(ds + "Signature", nsmap={None: NS["ds"]}, Id=signature_uid)
    signed_info = etree.SubElement(root, ds + "SignedInfo")
    c14n_uri = "http://www.w3.org/TR/2001/REC-xml-c14n-20010315#WithComments"
    etree.SubElement(signed_info, ds + "CanonicalizationMethod", Algorithm=c14n_uri)
    etree.SubElement(signed_info, ds + "SignatureMethod", Algorithm=signature_method)
    etree.SubElement(root, ds + "SignatureValue")
    x509_data = etree.SubElement(etree.SubElement(root, ds + "KeyInfo"), ds + "X509Data")
    etree.SubElement(x509_data, ds + "X509Certificate").text = signer.der64
    properties = etree.SubElement(etree.SubElement(root, ds + "Object"), ds + "SignatureProperties")
    purpose = etree.SubElement(
        properties, ds + "SignatureProperty", Id="purposeOfSignature", Target=f"#{signature_uid}"
    )
    purpose.text = "1.2.840.10065.1.12.1.14"
    manifest = etree.SubElement(etree.SubElement(root, ds + "Object"), ds + "Manifest", Id="IHEManifest")
    for uid, data in {set_uid: None, **documents}.items():
        reference = etree.SubElement(manifest, ds + "Reference", URI=f"urn:oid:{uid}")
        etree.SubElement(reference, ds + "DigestMethod", Algorithm=NS["ds"] + "sha1")
        etree.SubElement(reference, ds + "DigestValue").text = "AA==" if data is None else digest(data, "sha1")
    qualifying = etree.SubElement(
        etree.SubElement(root, ds + "Object"),
        xa + "QualifyingProperties",
        nsmap={None: NS["xades"]},
        Target=f"#{signature_uid}",
    )
    signed_properties = etree.SubElement(qualifying, xa + "SignedProperties", Id="S0-SignedProperties")
    signature_properties = etree.SubElement(signed_properties, xa + "SignedSignatureProperties")
    etree.SubElement(signature_properties, xa + "SigningTime").text = datetime.now(UTC).isoformat()
    cert = etree.SubElement(etree.SubElement(signature_properties, xa + "SigningCertificate"), xa + "Cert")
    cert_digest = etree.SubElement(cert, xa + "CertDigest")
    etree.SubElement(cert_digest, ds + "DigestMethod", nsmap={"ds": NS["ds"]}, Algorithm=NS["ds"] + "sha1")
    der = signer.cert.public_bytes(serialization.Encoding.DER)
    etree.SubElement(cert_digest, ds + "DigestValue", nsmap={"ds": NS["ds"]}).text = digest(der, "sha1")
    issuer_serial = etree.SubElement(cert, xa + "IssuerSerial")
    issuer = java_dn(signer.cert.issuer)
    etree.SubElement(issuer_serial, ds + "X509IssuerName", nsmap={None: NS["ds"]}).text = issuer
    etree.SubElement(issuer_serial, ds + "X509SerialNumber", nsmap={None: NS["ds"]}).text = str(
        signer.cert.serial_number
    )
    policy = etree.SubElement(signature_properties, xa + "SignaturePolicyIdentifier")
    etree.SubElement(policy, xa + "SignaturePolicyImplied")
    etree.SubElement(signed_properties, xa + "SignedDataObjectProperties")
    for target, kind in ((manifest, NS["ds"] + "Manifest"), (signed_properties, NS["xades"] + "SignedProperties")):
        # built in place: lxml's C14N of an element moved from another tree can lose its namespace
        reference = etree.SubElement(signed_info, ds + "Reference", Type=kind, URI=f"#{target.get('Id')}")
        etree.SubElement(reference, ds + "DigestMethod", Algorithm=digest_method)
        etree.SubElement(reference, ds + "DigestValue").text = digest(c14n(target), algorithm)
    canonical = c14n(signed_info, comments=True)
    x(root, "ds:SignatureValue").text = signer.sign(canonical, algorithm)
    if tamper is not None:
        tamper(root)
    return bytes(etree.tostring(root, xml_declaration=True, encoding="UTF-8"))


def make_kos(uid: str, ins: str = INS) -> bytes:
    dataset = dcmread(FIXTURES / "kos-manifest-example.dcm")
    dataset.SOPInstanceUID = UID(uid)
    dataset.file_meta.MediaStorageSOPInstanceUID = UID(uid)
    dataset.PatientID = ins
    out = BytesIO()
    dataset.save_as(out, enforce_file_format=True)
    return out.getvalue()


@dataclass
class Request:
    """A SOAP request the test can still edit before `encode()`."""

    endpoint: str
    action: str
    envelope: etree._Element
    parts: dict[str, tuple[str, bytes]] = field(default_factory=dict)  # Content-ID → (transfer encoding, bytes)
    mtom: bool = True
    boundary: str = field(default_factory=lambda: f"MIMEBoundary_{uuid.uuid4().hex}")

    @property
    def message_id(self) -> str:
        return x(self.envelope, "soap:Header/wsa:MessageID").text or ""

    def encode(self) -> tuple[dict[str, str], bytes]:
        soap = etree.tostring(self.envelope, xml_declaration=True, encoding="UTF-8")
        if not self.mtom:
            return {"Content-Type": f'application/soap+xml; charset=UTF-8; action="{self.action}"'}, soap
        root = 'application/xop+xml; charset=UTF-8; type="application/soap+xml"'
        parts = [("0.1", root, "binary", soap)]
        for content_id, (encoding, data) in self.parts.items():
            body = base64.encodebytes(data).replace(b"\n", b"\r\n") if encoding == "BASE64" else data
            parts.append((content_id, "application/octet-stream", encoding, body))
        chunks = []
        for content_id, media_type, encoding, data in parts:
            head = f"--{self.boundary}\r\nContent-Type: {media_type}\r\nContent-Transfer-Encoding: {encoding}\r\n"
            chunks += [head.encode(), f"Content-ID: <{content_id}>\r\n\r\n".encode(), data, b"\r\n"]
        chunks.append(f"--{self.boundary}--\r\n".encode())
        content_type = (
            f'multipart/related; boundary="{self.boundary}"; type="application/xop+xml"; start="<0.1>"; '
            f'start-info="application/soap+xml"; action="{self.action}"'
        )
        return {"Content-Type": content_type}, b"".join(chunks)


def soap(base_url: str, endpoint: str, action: str, body: etree._Element) -> etree._Element:
    envelope = etree.Element(f"{{{NS['soap']}}}Envelope", nsmap={"soap": NS["soap"]})
    header = etree.SubElement(envelope, f"{{{NS['soap']}}}Header")
    for name, value in (
        ("MessageID", f"urn:uuid:{uuid.uuid4()}"),
        ("To", f"{base_url}/{endpoint}"),
        ("Action", action),
    ):
        etree.SubElement(header, f"{{{NS['wsa']}}}{name}", nsmap={None: NS["wsa"]}).text = value
    header[-1].set("mustUnderstand", "true")
    etree.SubElement(header, f"{{{NS['wsse']}}}Security", nsmap={"wsse": NS["wsse"]})
    etree.SubElement(envelope, f"{{{NS['soap']}}}Body").append(body)
    return envelope


@dataclass
class Submission:
    """What `provide()` sent: uids and the bytes, to check what the registry kept."""

    request: Request
    set_uid: str
    kos_uid: str
    kos: bytes
    signature_uid: str
    signature: bytes


class Box:
    """The test's stand-in for the product's DMP client: one organisation, mutual TLS, signed VIHFs."""

    def __init__(
        self,
        sandbox: DmpSandbox,
        pki: PkiFiles,
        org: OrganisationFiles | None = None,
        tls: OrganisationFiles | None = None,
        timeout: float = 10,
    ) -> None:
        self.sandbox, self.pki = sandbox, pki
        self.org = org or pki.organisation
        self.signer = Signer.of(self.org)
        context = ssl.create_default_context(cafile=str(pki.ca_bundle))
        tls = tls or self.org
        context.load_cert_chain(tls.auth_cert, tls.auth_key)
        self.http = httpx.Client(verify=context, timeout=timeout)

    def close(self) -> None:
        self.http.close()

    def send(self, request: Request) -> httpx.Response:
        headers, body = request.encode()
        return self.http.post(f"{self.sandbox.base_url}/{request.endpoint}", headers=headers, content=body)

    def request(
        self,
        endpoint: str,
        action: str,
        body: etree._Element,
        *,
        patient: str = PATIENT,
        mtom: bool = False,
        **vihf_options: object,
    ) -> Request:
        envelope = soap(self.sandbox.base_url, endpoint, action, body)
        vihf(x(envelope, "//wsse:Security"), self.signer, patient=patient, **vihf_options)  # type: ignore[arg-type]
        return Request(endpoint, action, envelope, mtom=mtom)

    def provide(
        self,
        *,
        patient: str = PATIENT,
        kos_ins: str = INS,
        replaces: str | None = None,
        algorithm: str = "sha1",
        kos_uid: str | None = None,
        kos: bytes | None = None,
        manifest: dict[str, bytes] | None = None,
        tamper_xades: Callable[[etree._Element], None] | None = None,
        **vihf_options: object,
    ) -> Submission:
        """An ITI-41 in the fixture's shape for a fresh KOS (its own uniqueIds)."""
        kos_uid = kos_uid or generate_uid()
        kos = kos if kos is not None else make_kos(kos_uid, kos_ins)
        set_uid, signature_uid = generate_uid(prefix="1.2.250.1.999.1.1.8121.5."), generate_uid()
        signature = xades(self.signer, signature_uid, set_uid, manifest or {kos_uid: kos}, algorithm, tamper_xades)
        envelope = copy.deepcopy(FIXTURE)
        header = x(envelope, "soap:Header")
        x(header, "wsa:MessageID").text = f"urn:uuid:{uuid.uuid4()}"
        x(header, "wsa:To").text = f"{self.sandbox.base_url}/repository"
        security = x(header, "wsse:Security")
        vihf(security, self.signer, patient=patient, algorithm=algorithm, **vihf_options)  # type: ignore[arg-type]
        objects = x(envelope, "//rim:RegistryObjectList")
        for ext in objects.xpath(".//rim:ExternalIdentifier", namespaces=NS):
            if ext.get("value", "").endswith("ISO^NH"):
                ext.set("value", patient)
        x(
            objects,
            "rim:RegistryPackage/rim:ExternalIdentifier[@identificationScheme="
            "'urn:uuid:96fdda7c-d067-4183-912e-bf5ee74998a8']",
        ).set("value", set_uid)
        for entry_id, uid, data in (("DocumentKOS", kos_uid, kos), ("Signature01", signature_uid, signature)):
            entry = x(objects, f"rim:ExtrinsicObject[@id='{entry_id}']")
            x(entry, f"rim:ExternalIdentifier[@identificationScheme='{UNIQUE_ID_SCHEME}']").set("value", uid)
            x(entry, "rim:Slot[@name='hash']/rim:ValueList/rim:Value").text = hashlib.sha1(data).hexdigest()
            x(entry, "rim:Slot[@name='size']/rim:ValueList/rim:Value").text = str(len(data))
        if replaces:
            add_association(objects, "urn:ihe:iti:2007:AssociationType:RPLC", "DocumentKOS", replaces)
        request = Request("repository", ITI41, envelope, {"0.2": ("BASE64", kos), "0.3": ("binary", signature)})
        return Submission(request, set_uid, kos_uid, kos, signature_uid, signature)

    def query(
        self,
        query_id: str = FIND_DOCUMENTS,
        return_type: str = "LeafClass",
        *,
        patient: str = PATIENT,
        parameters: dict[str, list[str]] | None = None,
        mtom: bool = False,
    ) -> Request:
        body = etree.Element(f"{{{NS['query']}}}AdhocQueryRequest", nsmap={"query": NS["query"], "rim": NS["rim"]})
        etree.SubElement(body, f"{{{NS['query']}}}ResponseOption", returnComposedObjects="true", returnType=return_type)
        adhoc = etree.SubElement(body, f"{{{NS['rim']}}}AdhocQuery", id=query_id)
        default = (
            {"$XDSDocumentEntryPatientId": [f"'{patient}'"], "$XDSDocumentEntryStatus": [f"('{APPROVED}')"]}
            if query_id != GET_DOCUMENTS
            else {}
        )
        for name, values in (default | (parameters or {})).items():
            value_list = etree.SubElement(
                etree.SubElement(adhoc, f"{{{NS['rim']}}}Slot", name=name), f"{{{NS['rim']}}}ValueList"
            )
            for value in values:
                etree.SubElement(value_list, f"{{{NS['rim']}}}Value").text = value
        return self.request("registry", ITI18, body, patient=patient, mtom=mtom)

    def delete(
        self, entry_uuid: str, *, original: str = APPROVED, new: str = DELETED, patient: str = PATIENT
    ) -> Request:
        body = etree.Element(f"{{{NS['lcm']}}}SubmitObjectsRequest", nsmap={"lcm": NS["lcm"], None: NS["rim"]})
        objects = etree.SubElement(body, f"{{{NS['rim']}}}RegistryObjectList")
        package = copy.deepcopy(x(FIXTURE, "//rim:RegistryPackage"))
        for ext in package.xpath("rim:ExternalIdentifier", namespaces=NS):
            if ext.get("value", "").endswith("ISO^NH"):
                ext.set("value", patient)
            elif ext.get("identificationScheme") == "urn:uuid:96fdda7c-d067-4183-912e-bf5ee74998a8":
                ext.set("value", generate_uid(prefix="1.2.250.1.999.1.1.8121.5."))
        objects.append(package)
        association = add_association(
            objects, "urn:ihe:iti:2010:AssociationType:UpdateAvailabilityStatus", "SubmissionSet01", entry_uuid
        )
        for name, value in (("OriginalStatus", original), ("NewStatus", new)):
            slot = etree.SubElement(association, f"{{{NS['rim']}}}Slot", name=name)
            etree.SubElement(etree.SubElement(slot, f"{{{NS['rim']}}}ValueList"), f"{{{NS['rim']}}}Value").text = value
        return self.request("registry", ITI57, body, patient=patient)

    def retrieve(self, unique_id: str, repository: str | None = None, *, patient: str = PATIENT) -> Request:
        body = etree.Element(f"{{{NS['xdsb']}}}RetrieveDocumentSetRequest", nsmap={"xdsb": NS["xdsb"]})
        document = etree.SubElement(body, f"{{{NS['xdsb']}}}DocumentRequest")
        etree.SubElement(document, f"{{{NS['xdsb']}}}RepositoryUniqueId").text = (
            repository or self.sandbox.rules.repository_uid
        )
        etree.SubElement(document, f"{{{NS['xdsb']}}}DocumentUniqueId").text = unique_id
        return self.request("repository", ITI43, body, patient=patient, mtom=True)


def add_association(objects: etree._Element, kind: str, source: str, target: str) -> etree._Element:
    return etree.SubElement(
        objects,
        f"{{{NS['rim']}}}Association",
        associationType=kind,
        id=f"urn:uuid:{uuid.uuid4()}",
        sourceObject=source,
        targetObject=target,
    )


# -- reading answers -----------------------------------------------------------------------------


def parts_of(response: httpx.Response) -> tuple[etree._Element, dict[str, bytes]]:
    """(the SOAP envelope, attachments by Content-ID) of a plain or MTOM answer."""
    content_type = response.headers["content-type"]
    if not content_type.startswith("multipart/related"):
        return etree.fromstring(response.content), {}
    boundary = re.search(r'boundary="([^"]+)"', content_type)
    assert boundary and 'type="application/xop+xml"' in content_type
    delimiter = b"--" + boundary.group(1).encode()
    assert response.content.rstrip().endswith(delimiter + b"--")
    root, attachments = None, {}
    for chunk in response.content.split(delimiter)[1:-1]:
        head, _, data = chunk.strip(b"\r\n").partition(b"\r\n\r\n")
        content_id = re.search(rb"Content-ID: <([^>]+)>", head)
        assert content_id is not None
        if root is None:
            assert b"application/xop+xml" in head
            root = etree.fromstring(data)
        else:
            attachments[content_id.group(1).decode()] = data
    assert root is not None
    return root, attachments


def body_of(response: httpx.Response) -> etree._Element:
    envelope, _ = parts_of(response)
    return x(envelope, "soap:Body/*")


def codes(response: httpx.Response) -> list[str]:
    assert response.status_code == 200, response.text
    body = body_of(response)
    status = body.get("status") or x(body, "rs:RegistryResponse").get("status") or ""
    assert status.endswith(":Failure"), response.text
    return [str(code) for code in body.xpath(".//rs:RegistryError/@errorCode", namespaces=NS)]


def succeeded(response: httpx.Response) -> bool:
    body = body_of(response) if response.status_code == 200 else None
    return body is not None and body.get("status", "").endswith(":Success")


def fault(response: httpx.Response) -> str:
    """The Subcode (or Code) of a SOAP 1.2 Fault answer."""
    assert response.status_code == 500 and response.headers["content-type"].startswith("application/soap+xml")
    body = body_of(response)
    subcode = body.xpath("soap:Code/soap:Subcode/soap:Value/text()", namespaces=NS)
    return str(subcode[0] if subcode else x(body, "soap:Code/soap:Value").text)


# -- fixtures ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PkiFiles:
    return create_pki(tmp_path_factory.mktemp("pki"), STRUCTURE, organisation_name="CABINET M DOC0036790")


@pytest.fixture(scope="module")
def other_org(pki: PkiFiles) -> OrganisationFiles:
    """Another structure certified by the same CA."""
    return issue_organisation(pki.folder, "123456789000000", "AUTRE CABINET")


@pytest.fixture(scope="module")
def sandbox(pki: PkiFiles, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DmpSandbox]:
    with DmpSandbox(tmp_path_factory.mktemp("dmp"), pki) as running:
        yield running


@pytest.fixture(autouse=True)
def behaving(request: pytest.FixtureRequest) -> Iterator[None]:
    """Every test starts with a well-behaved sandbox and must leave no unexpected exception in it."""
    if "sandbox" not in request.fixturenames:
        yield
        return
    sandbox: DmpSandbox = request.getfixturevalue("sandbox")
    sandbox.set_fault("none")
    yield
    sandbox.set_fault("none")
    assert sandbox.errors == []


@pytest.fixture
def box(sandbox: DmpSandbox, pki: PkiFiles) -> Iterator[Box]:
    client = Box(sandbox, pki)
    yield client
    client.close()


def entry_of(sandbox: DmpSandbox, unique_id: str) -> tuple[str, str]:
    """(entryUUID, status) of a registered uniqueId."""
    found = [entry for entry in sandbox.entries() if entry.unique_id == unique_id]
    assert len(found) == 1
    return found[0].entry_uuid, found[0].status


def registered(box: Box, **options: object) -> Submission:
    submission = box.provide(**options)  # type: ignore[arg-type]
    response = box.send(submission.request)
    assert succeeded(response), response.text
    return submission


# -- ITI-41 accepted, then found -----------------------------------------------------------------


def test_valid_submission_is_registered_and_answered_like_the_dmp(box: Box, sandbox: DmpSandbox) -> None:
    submission = box.provide()
    response = box.send(submission.request)
    envelope, _ = parts_of(response)
    assert response.status_code == 200 and response.headers["content-type"].startswith("multipart/related")
    assert x(envelope, "soap:Header/wsa:Action").text == "urn:ihe:iti:2007:ProvideAndRegisterDocumentSet-bResponse"
    assert x(envelope, "soap:Header/wsa:RelatesTo").text == submission.request.message_id
    assert (
        x(envelope, "soap:Body/rs:RegistryResponse").get("status")
        == "urn:oasis:names:tc:ebxml-regrep:ResponseStatusType:Success"
    )
    kept = {entry.unique_id: entry for entry in sandbox.entries()}
    kos, signature = kept[submission.kos_uid], kept[submission.signature_uid]
    assert (kos.status, kos.type_code, kos.document, kos.patient_id) == (APPROVED, "IMG-KOS", submission.kos, PATIENT)
    assert (signature.type_code, signature.document) == ("E1762", submission.signature)
    assert kos.submission_set == signature.submission_set == submission.set_uid
    assert kos.entry_uuid.startswith("urn:uuid:") and kos.hash == hashlib.sha1(submission.kos).hexdigest()


def test_sha256_signatures_are_accepted_too(box: Box) -> None:
    registered(box, algorithm="sha256")


def test_find_documents_returns_the_full_entry(box: Box, sandbox: DmpSandbox) -> None:
    submission = registered(box)
    response = box.send(box.query())
    body = body_of(response)
    assert body.get("status", "").endswith(":Success") and x(response_envelope(response), "//wsa:Action").text == (
        "urn:ihe:iti:2007:RegistryStoredQueryResponse"
    )
    entry = x(body, f"rim:RegistryObjectList/rim:ExtrinsicObject[rim:ExternalIdentifier/@value='{submission.kos_uid}']")
    entry_uuid, _ = entry_of(sandbox, submission.kos_uid)
    assert entry.get("id") == entry_uuid and entry.get("status") == APPROVED
    assert x(entry, "rim:Slot[@name='repositoryUniqueId']/rim:ValueList/rim:Value").text == sandbox.rules.repository_uid
    assert (
        x(entry, "rim:Classification[@classificationScheme='urn:uuid:f0306f51-975f-434e-a61c-c59651d33983']").get(
            "classifiedObject"
        )
        == entry_uuid
    )
    assert int(body.get("totalResultCount", "0")) == len(body.xpath("rim:RegistryObjectList/*", namespaces=NS))


def response_envelope(response: httpx.Response) -> etree._Element:
    return parts_of(response)[0]


def test_get_documents_by_unique_id_gives_the_entry_uuid(box: Box, sandbox: DmpSandbox) -> None:
    submission = registered(box)
    request = box.query(
        GET_DOCUMENTS, "ObjectRef", parameters={"$XDSDocumentEntryUniqueId": [f"('{submission.kos_uid}')"]}
    )
    body = body_of(box.send(request))
    assert [ref.get("id") for ref in body.xpath("rim:RegistryObjectList/rim:ObjectRef", namespaces=NS)] == [
        entry_of(sandbox, submission.kos_uid)[0]
    ]


def test_find_by_reference_id_and_event_code(box: Box) -> None:
    submission = registered(box)
    accession = "'7252295367250016^^^&1.2.840.113619.6.196&ISO^urn:ihe:iti:xds:2013:accession'"
    found = body_of(
        box.send(box.query(FIND_BY_REFERENCE, parameters={"$XDSDocumentEntryReferenceIdList": [f"({accession})"]}))
    )
    assert submission.kos_uid in etree.tostring(found).decode()
    mr, ct = "('MR^^1.2.250.1.213.1.1.5.618')", "('CT^^1.2.250.1.213.1.1.5.618')"
    with_mr = body_of(box.send(box.query(parameters={"$XDSDocumentEntryEventCodeList": [mr]})))
    with_ct = body_of(box.send(box.query(parameters={"$XDSDocumentEntryEventCodeList": [ct]})))
    assert submission.kos_uid in etree.tostring(with_mr).decode()
    assert submission.kos_uid not in etree.tostring(with_ct).decode()
    created = {"$XDSDocumentEntryCreationTimeFrom": ["20231114"], "$XDSDocumentEntryCreationTimeTo": ["20231115"]}
    later = {"$XDSDocumentEntryCreationTimeFrom": ["20231114144458"]}  # the fixture's KOS: 20231114144457
    assert submission.kos_uid in etree.tostring(body_of(box.send(box.query(parameters=created)))).decode()
    assert submission.kos_uid not in etree.tostring(body_of(box.send(box.query(parameters=later)))).decode()


def test_registry_answers_mtom_when_asked_in_mtom(box: Box) -> None:
    response = box.send(box.query(mtom=True))
    assert response.headers["content-type"].startswith("multipart/related") and succeeded(response)


def test_retrieve_gives_back_the_kos_bytes(box: Box) -> None:
    submission = registered(box)
    response = box.send(box.retrieve(submission.kos_uid))
    envelope, attachments = parts_of(response)
    document = x(envelope, "//xdsb:DocumentResponse")
    assert x(document, "xdsb:DocumentUniqueId").text == submission.kos_uid
    assert x(document, "xdsb:mimeType").text == "application/dicom"
    href = x(document, "xdsb:Document/xop:Include").get("href", "")
    assert attachments[href.removeprefix("cid:")] == submission.kos
    unknown = box.send(box.retrieve(generate_uid()))
    assert codes(unknown) == ["XDSDocumentUniqueIdError"]
    assert codes(box.send(box.retrieve(submission.kos_uid, repository="1.2.3"))) == ["XDSUnknownRepositoryId"]


# -- ITI-41 refused: each rule in turn -----------------------------------------------------------


def objects_of(submission: Submission) -> etree._Element:
    return x(submission.request.envelope, "//rim:RegistryObjectList")


def set_slot(submission: Submission, entry_id: str, slot: str, value: str) -> None:
    x(
        objects_of(submission),
        f"rim:ExtrinsicObject[@id='{entry_id}']/rim:Slot[@name='{slot}']/rim:ValueList/rim:Value",
    ).text = value


def classification(submission: Submission, entry_id: str, scheme: str) -> etree._Element:
    return x(
        objects_of(submission),
        f"rim:ExtrinsicObject[@id='{entry_id}']/rim:Classification[@classificationScheme='{scheme}']",
    )


def drop_signature(submission: Submission) -> None:
    objects = objects_of(submission)
    objects.remove(x(objects, "rim:ExtrinsicObject[@id='Signature01']"))
    for association in objects.xpath(
        "rim:Association[@sourceObject='Signature01' or @targetObject='Signature01']", namespaces=NS
    ):
        objects.remove(association)
    body = x(submission.request.envelope, "//xdsb:ProvideAndRegisterDocumentSetRequest")
    body.remove(x(body, "xdsb:Document[@id='Signature01']"))
    del submission.request.parts["0.3"]


def rename_class(submission: Submission) -> None:
    classification(submission, "DocumentKOS", "urn:uuid:41a5887f-8865-4c09-adf7-e362475b143a").set(
        "nodeRepresentation", "10"
    )


def restricted(submission: Submission) -> None:
    classification(submission, "DocumentKOS", "urn:uuid:f4f85eac-e6cb-4883-b524-f2705394840f").set(
        "nodeRepresentation", "R"
    )


def unknown_association(submission: Submission) -> None:
    add_association(
        objects_of(submission), "urn:ihe:iti:2007:AssociationType:APND", "DocumentKOS", f"urn:uuid:{uuid.uuid4()}"
    )


def repeated_unique_id(submission: Submission) -> None:
    package = x(objects_of(submission), "rim:RegistryPackage")
    x(package, "rim:ExternalIdentifier[@identificationScheme='urn:uuid:96fdda7c-d067-4183-912e-bf5ee74998a8']").set(
        "value", submission.kos_uid
    )


def entry_of_other_patient(submission: Submission) -> None:
    other = f"{OTHER_INS}^^^&1.2.250.1.213.1.4.10&ISO^NH"
    x(
        objects_of(submission),
        "rim:ExtrinsicObject[@id='DocumentKOS']/rim:ExternalIdentifier"
        "[@identificationScheme='urn:uuid:58a6f841-87b3-4a3e-92fd-a8ffeff98427']",
    ).set("value", other)


def no_hasmember(submission: Submission) -> None:
    objects = objects_of(submission)
    objects.remove(x(objects, "rim:Association[@targetObject='DocumentKOS']"))


def extra_part(submission: Submission) -> None:
    submission.request.parts["0.9"] = ("binary", b"stray")


def inline_document(submission: Submission) -> None:
    document = x(submission.request.envelope, "//xdsb:Document[@id='DocumentKOS']")
    document.remove(x(document, "xop:Include"))
    document.text = base64.b64encode(submission.kos).decode()
    del submission.request.parts["0.2"]


def missing_creation_time(submission: Submission) -> None:
    entry = x(objects_of(submission), "rim:ExtrinsicObject[@id='DocumentKOS']")
    entry.remove(x(entry, "rim:Slot[@name='creationTime']"))


@pytest.mark.parametrize(
    ("change", "code"),
    [
        (lambda s: set_slot(s, "DocumentKOS", "hash", "0" * 40), "XDSNonIdenticalHash"),
        (lambda s: set_slot(s, "DocumentKOS", "size", "8449"), "XDSNonIdenticalSize"),
        (drop_signature, "XDSRegistryMetadataError"),
        (rename_class, "XDSRegistryMetadataError"),
        (restricted, "XDSRegistryMetadataError"),
        (unknown_association, "XDSRegistryMetadataError"),
        (no_hasmember, "XDSRegistryMetadataError"),
        (missing_creation_time, "XDSRegistryMetadataError"),
        (repeated_unique_id, "XDSRegistryDuplicateUniqueIdInMessage"),
        (entry_of_other_patient, "XDSPatientIdDoesNotMatch"),
        (extra_part, "XDSMissingDocumentMetadata"),
        (inline_document, "XDSMissingDocument"),
    ],
    ids=[
        "hash",
        "size",
        "no-signature",
        "class-code",
        "confidentiality",
        "association-type",
        "no-hasmember",
        "creation-time",
        "uid-twice-in-message",
        "entry-patient",
        "stray-part",
        "inline-document",
    ],
)
def test_metadata_rule_broken(box: Box, sandbox: DmpSandbox, change: Callable[[Submission], None], code: str) -> None:
    submission = box.provide()
    change(submission)
    assert codes(box.send(submission.request)) == [code]
    assert all(entry.unique_id != submission.kos_uid for entry in sandbox.entries())


def test_every_problem_of_a_phase_is_listed(box: Box) -> None:
    submission = box.provide()
    set_slot(submission, "DocumentKOS", "hash", "0" * 40)
    set_slot(submission, "DocumentKOS", "size", "1")
    restricted(submission)
    assert sorted(codes(box.send(submission.request))) == [
        "XDSNonIdenticalHash",
        "XDSNonIdenticalSize",
        "XDSRegistryMetadataError",
    ]


def test_plain_soap_without_mtom_has_no_documents(box: Box) -> None:
    submission = box.provide()
    submission.request.mtom = False
    assert set(codes(box.send(submission.request))) == {"XDSMissingDocument"}


def test_unknown_ins_oid(box: Box) -> None:
    assert codes(box.send(box.provide(patient=f"{INS}^^^&1.2.250.1.999&ISO^NH").request)) == [
        "XDSRegistryMetadataError"
    ]


def test_kos_content_must_match_its_metadata(box: Box) -> None:
    assert codes(box.send(box.provide(kos_ins=OTHER_INS).request)) == ["XDSRepositoryMetadataError"]
    assert codes(box.send(box.provide(kos=b"not dicom").request)) == ["XDSRepositoryMetadataError"]
    assert codes(box.send(box.provide(kos=make_kos(generate_uid())).request)) == ["XDSRepositoryMetadataError"]


def test_vihf_patient_must_be_the_submitted_patient(box: Box) -> None:
    submission = box.provide(
        attributes={"urn:oasis:names:tc:xacml:2.0:resource:resource-id": f"{OTHER_INS}^^^&1.2.250.1.213.1.4.10&ISO^NH"}
    )
    assert codes(box.send(submission.request)) == ["XDSPatientIdDoesNotMatch"]


def test_duplicate_unique_id_in_registry(box: Box) -> None:
    first = registered(box)
    again = box.provide(kos_uid=first.kos_uid, kos=first.kos)
    assert codes(box.send(again.request)) == ["XDSDuplicateUniqueIdInRegistry"]
    other_bytes = box.provide(kos_uid=first.kos_uid, kos=make_kos(first.kos_uid) + b"\0\0")
    assert codes(box.send(other_bytes.request)) == ["XDSNonIdenticalHash"]


def test_tampered_xades_digest(box: Box) -> None:
    def tamper(root: etree._Element) -> None:
        x(root, "ds:Object/ds:Manifest/ds:Reference[2]/ds:DigestValue").text = digest(b"other bytes", "sha1")

    assert codes(box.send(box.provide(tamper_xades=tamper).request)) == ["XDSRegistryMetadataError"]


def test_xades_manifest_must_carry_the_document_digest(box: Box) -> None:
    kos_uid = generate_uid()
    submission = box.provide(kos_uid=kos_uid, manifest={kos_uid: b"a validly signed but wrong digest"})
    response = box.send(submission.request)
    assert codes(response) == ["XDSRegistryMetadataError"] and "manifeste" in response.text


def test_xades_signer_of_another_structure(box: Box, other_org: OrganisationFiles) -> None:
    submission = box.provide()
    kos_uid = submission.kos_uid
    forged = xades(Signer.of(other_org), submission.signature_uid, submission.set_uid, {kos_uid: submission.kos})
    submission.request.parts["0.3"] = ("binary", forged)
    set_slot(submission, "Signature01", "hash", hashlib.sha1(forged).hexdigest())
    set_slot(submission, "Signature01", "size", str(len(forged)))
    assert codes(box.send(submission.request)) == ["XDSRegistryMetadataError"]


def test_unknown_patients_refused_when_required(pki: PkiFiles, tmp_path: Path) -> None:
    with DmpSandbox(tmp_path, pki, require_known_patients=True) as strict:
        client = Box(strict, pki)
        try:
            assert codes(client.send(client.provide().request)) == ["XDSUnknownPatientId"]
            strict.add_patient(INS)
            assert succeeded(client.send(client.provide().request))
        finally:
            client.close()


# -- the message itself: SOAP, WS-Addressing, VIHF, TLS ------------------------------------------


def header(request: Request, name: str) -> etree._Element:
    return x(request.envelope, f"soap:Header/wsa:{name}")


def test_wrong_action_for_the_endpoint(box: Box) -> None:
    request = box.provide().request
    header(request, "Action").text = ITI18
    request.action = ITI18
    assert fault(box.send(request)) == "wsa:ActionNotSupported"


def test_http_action_must_match_wsa_action(box: Box) -> None:
    request = box.provide().request
    request.action = ITI43
    assert fault(box.send(request)) == "wsa:ActionMismatch"


def test_addressing_headers(box: Box) -> None:
    missing = box.provide().request
    x(missing.envelope, "soap:Header").remove(header(missing, "MessageID"))
    assert fault(box.send(missing)) == "wsa:MessageAddressingHeaderRequired"
    not_uuid = box.provide().request
    header(not_uuid, "MessageID").text = "42"
    assert fault(box.send(not_uuid)) == "wsa:InvalidAddressingHeader"
    elsewhere = box.provide().request
    header(elsewhere, "To").text = "https://dev9.lps2.dmp.gouv.fr/si-dmp-server/v2/services/repository"
    assert fault(box.send(elsewhere)) == "wsa:DestinationUnreachable"
    optional = box.provide().request
    del header(optional, "Action").attrib["mustUnderstand"]
    assert fault(box.send(optional)) == "wsa:InvalidAddressingHeader"


def test_fault_relates_to_the_request(box: Box) -> None:
    request = box.provide().request
    request.action = ITI43
    envelope, _ = parts_of(box.send(request))
    assert x(envelope, "soap:Header/wsa:RelatesTo").text == request.message_id


def test_soap_11_is_a_version_mismatch(box: Box) -> None:
    body = (
        b'<?xml version="1.0"?><e:Envelope xmlns:e="http://schemas.xmlsoap.org/soap/envelope/"><e:Body/></e:Envelope>'
    )
    response = box.http.post(
        f"{box.sandbox.base_url}/registry",
        content=body,
        headers={"Content-Type": "application/soap+xml; charset=UTF-8"},
    )
    assert fault(response) == "soap:VersionMismatch"


def vihf_of(request: Request) -> etree._Element:
    return x(request.envelope, "//wsse:Security/saml2:Assertion")


def test_vihf_signature_covers_every_attribute(box: Box) -> None:
    request = box.provide().request
    x(
        vihf_of(request), "saml2:AttributeStatement/saml2:Attribute[@Name='Authentification_Mode']/saml2:AttributeValue"
    ).text = "DIRECTE"
    assert fault(box.send(request)) == "wsse:FailedCheck"


def test_vihf_must_be_signed(box: Box) -> None:
    request = box.provide().request
    assertion = vihf_of(request)
    assertion.remove(x(assertion, "ds:Signature"))
    assert fault(box.send(request)) == "wsse:InvalidSecurity"


@pytest.mark.parametrize(
    ("attributes", "expected"),
    [
        ({"LPS_ID_HOMOLOGATION_DMP": None}, "wsse:InvalidSecurity"),
        ({"VIHF_Version": "2.0"}, "wsse:InvalidSecurityToken"),
        ({"Secteur_Activite": "SA25"}, "wsse:InvalidSecurityToken"),
        ({"Authentification_Mode": "AUTRE"}, "wsse:InvalidSecurityToken"),
        ({"Ressource_URN": "urn:autre"}, "wsse:InvalidSecurityToken"),
        ({"Identifiant_Structure": "123456789000000"}, "wsse:FailedAuthentication"),
    ],
    ids=["no-homologation", "version", "sector", "mode", "resource-urn", "structure"],
)
def test_vihf_attributes(box: Box, attributes: dict[str, str | None], expected: str) -> None:
    assert fault(box.send(box.provide(attributes=attributes).request)) == expected


def test_vihf_issuer_must_be_the_signing_certificate(box: Box) -> None:
    request = box.provide(issuer="CN=DRIMbox, OU=499700367909006, O=AUTRE, C=FR").request
    assert fault(box.send(request)) == "wsse:FailedAuthentication"


def test_vihf_issuer_spelling_does_not_matter(box: Box) -> None:
    signer = Signer.of(box.org)
    rfc4514 = signer.cert.subject.rfc4514_string()  # no spaces, reversed order: the same name
    assert succeeded(box.send(box.provide(issuer=rfc4514).request))


def test_vihf_signed_by_another_structure(sandbox: DmpSandbox, pki: PkiFiles, other_org: OrganisationFiles) -> None:
    client = Box(sandbox, pki, org=other_org, tls=pki.organisation)
    try:
        assert fault(client.send(client.provide().request)) == "wsse:FailedAuthentication"
    finally:
        client.close()


def test_tls_certificate_of_another_structure(sandbox: DmpSandbox, pki: PkiFiles, other_org: OrganisationFiles) -> None:
    client = Box(sandbox, pki, tls=other_org)
    try:
        response = client.send(client.provide().request)
        assert fault(response) == "wsse:FailedAuthentication" and "TLS" in response.text
    finally:
        client.close()


def test_vihf_signed_outside_igc_sante(sandbox: DmpSandbox, pki: PkiFiles, tmp_path: Path) -> None:
    stranger = create_pki(tmp_path, STRUCTURE)
    client = Box(sandbox, pki)
    client.signer = Signer.of(stranger.organisation)
    try:
        assert fault(client.send(client.provide().request)) == "wsse:FailedAuthentication"
    finally:
        client.close()


def test_sha1_refused_when_not_accepted(pki: PkiFiles, tmp_path: Path) -> None:
    sha256 = ["http://www.w3.org/2001/04/xmldsig-more#rsa-sha256"]
    with DmpSandbox(
        tmp_path, pki, signature_algorithms=sha256, digest_algorithms=["http://www.w3.org/2001/04/xmlenc#sha256"]
    ) as modern:
        client = Box(modern, pki)
        try:
            assert fault(client.send(client.provide().request)) == "wsse:UnsupportedAlgorithm"
            assert succeeded(client.send(client.provide(algorithm="sha256").request))  # the manifest stays SHA-1
        finally:
            client.close()


def test_client_certificate_of_another_ca_is_refused_at_tls(sandbox: DmpSandbox, tmp_path: Path) -> None:
    stranger = create_pki(tmp_path, STRUCTURE)
    context = ssl.create_default_context(cafile=str(stranger.ca_bundle))
    context.load_verify_locations(cafile=str(sandbox.cafile))
    context.load_cert_chain(stranger.organisation.auth_cert, stranger.organisation.auth_key)
    before = sandbox.handshake_failures
    with httpx.Client(verify=context, timeout=5) as client, pytest.raises(httpx.TransportError):
        client.post(f"{sandbox.base_url}/registry", content=b"<x/>", headers={"Content-Type": "application/soap+xml"})
    deadline = time.monotonic() + 5  # the server thread may log the failed handshake after the client gave up
    while sandbox.handshake_failures == before and time.monotonic() < deadline:
        time.sleep(0.01)
    assert sandbox.handshake_failures == before + 1


def test_no_client_certificate_is_refused_at_tls(sandbox: DmpSandbox) -> None:
    context = ssl.create_default_context(cafile=str(sandbox.cafile))
    with httpx.Client(verify=context, timeout=5) as client, pytest.raises(httpx.TransportError):
        client.post(f"{sandbox.base_url}/registry", content=b"<x/>", headers={"Content-Type": "application/soap+xml"})


def test_revoked_client_certificate_is_refused_at_tls(tmp_path: Path) -> None:
    pki = create_pki(tmp_path / "pki", STRUCTURE)
    with DmpSandbox(tmp_path / "dmp", pki) as dmp:
        client = Box(dmp, pki)
        try:
            assert succeeded(client.send(client.query()))
            revoke(pki, pki.organisation.auth_cert)
            client.http.close()
            client = Box(dmp, pki)
            with pytest.raises(httpx.TransportError):
                client.send(client.query())
        finally:
            client.close()


# -- replacement, withdrawal ---------------------------------------------------------------------


def test_rplc_deprecates_the_replaced_entry(box: Box, sandbox: DmpSandbox) -> None:
    first = registered(box)
    first_uuid, _ = entry_of(sandbox, first.kos_uid)
    second = registered(box, replaces=first_uuid)
    assert entry_of(sandbox, first.kos_uid)[1] == DEPRECATED
    assert entry_of(sandbox, second.kos_uid)[1] == APPROVED
    assert [e.replaces for e in sandbox.entries() if e.unique_id == second.kos_uid] == [first_uuid]
    found = etree.tostring(body_of(box.send(box.query()))).decode()
    assert second.kos_uid in found and first.kos_uid not in found
    assert codes(box.send(box.provide(replaces=first_uuid).request)) == ["XDSRegistryDeprecatedDocumentError"]


def test_rplc_of_an_unknown_or_foreign_entry(box: Box, sandbox: DmpSandbox) -> None:
    assert codes(box.send(box.provide(replaces=f"urn:uuid:{uuid.uuid4()}").request)) == ["XDSRegistryMetadataError"]
    other_patient = f"{OTHER_INS}^^^&1.2.250.1.213.1.4.10&ISO^NH"
    theirs = registered(box, patient=other_patient, kos_ins=OTHER_INS)
    theirs_uuid, _ = entry_of(sandbox, theirs.kos_uid)
    assert codes(box.send(box.provide(replaces=theirs_uuid).request)) == ["XDSPatientIdDoesNotMatch"]


def test_iti57_deletes_an_entry(box: Box, sandbox: DmpSandbox) -> None:
    submission = registered(box)
    entry_uuid, _ = entry_of(sandbox, submission.kos_uid)
    request = box.delete(entry_uuid)
    response = box.send(request)
    assert succeeded(response) and response.headers["content-type"].startswith("application/soap+xml")
    assert x(parts_of(response)[0], "//wsa:Action").text == "urn:ihe:iti:2010:UpdateDocumentSetResponse"
    assert entry_of(sandbox, submission.kos_uid)[1] == DELETED
    assert submission.kos_uid not in etree.tostring(body_of(box.send(box.query()))).decode()
    by_uid = box.query(GET_DOCUMENTS, parameters={"$XDSDocumentEntryUniqueId": [f"('{submission.kos_uid}')"]})
    assert x(body_of(box.send(by_uid)), "rim:RegistryObjectList/rim:ExtrinsicObject").get("status") == DELETED
    assert codes(box.send(box.retrieve(submission.kos_uid))) == ["XDSDocumentUniqueIdError"]
    assert codes(box.send(box.delete(entry_uuid))) == ["XDSMetadataUpdateError"]  # OriginalStatus is no longer Approved


def test_iti57_refusals(box: Box, sandbox: DmpSandbox) -> None:
    assert codes(box.send(box.delete(f"urn:uuid:{uuid.uuid4()}"))) == ["XDSMetadataUpdateError"]
    submission = registered(box)
    entry_uuid, _ = entry_of(sandbox, submission.kos_uid)
    assert codes(box.send(box.delete(entry_uuid, new="urn:oasis:names:tc:ebxml-regrep:StatusType:Archived"))) == [
        "XDSMetadataUpdateOperationError"
    ]
    other = f"{OTHER_INS}^^^&1.2.250.1.213.1.4.10&ISO^NH"
    assert codes(box.send(box.delete(entry_uuid, patient=other))) == ["XDSPatientIdDoesNotMatch"]
    assert entry_of(sandbox, submission.kos_uid)[1] == APPROVED


# -- ITI-18 refusals -----------------------------------------------------------------------------


def test_query_refusals(box: Box) -> None:
    assert codes(box.send(box.query("urn:uuid:00000000-0000-0000-0000-000000000000"))) == ["XDSUnknownStoredQuery"]
    no_status = box.query()
    adhoc = x(no_status.envelope, "//rim:AdhocQuery")
    adhoc.remove(x(adhoc, "rim:Slot[@name='$XDSDocumentEntryStatus']"))
    assert codes(box.send(no_status)) == ["XDSStoredQueryMissingParam"]
    both = {"$XDSDocumentEntryUniqueId": ["('1.2.3')"], "$XDSDocumentEntryEntryUUID": [f"('urn:uuid:{uuid.uuid4()}')"]}
    assert codes(box.send(box.query(GET_DOCUMENTS, parameters=both))) == ["XDSStoredQueryParamNumber"]
    assert codes(box.send(box.query(parameters={"$XDSDocumentEntryAuthorPerson": ["('%')"]}))) == ["XDSRegistryError"]
    assert codes(box.send(box.query(parameters={"$XDSDocumentEntryStatus": ["(Approved)"]}))) == [
        "XDSStoredQueryParamNumber"
    ]


def test_query_for_another_patient_than_the_vihf(box: Box) -> None:
    request = box.query()
    vihf(x(request.envelope, "//wsse:Security"), box.signer, patient=f"{OTHER_INS}^^^&1.2.250.1.213.1.4.10&ISO^NH")
    assert codes(box.send(request)) == ["XDSPatientIdDoesNotMatch"]


# -- TD0.2 / TD0.3 -------------------------------------------------------------------------------


def existence_request(box: Box, ins: str) -> Request:
    body = etree.fromstring(f"""
    <PRPA_IN201307UV02 xmlns="urn:hl7-org:v3" ITSVersion="XML_1.0">
      <id root="1.2.250.1.999.42" extension="{uuid.uuid4()}"/><creationTime value="20240101120000"/>
      <interactionId root="2.16.840.1.113883.1.6" extension="PRPA_IN201307UV02"/>
      <processingCode code="P"/><processingModeCode code="T"/><acceptAckCode code="AL"/>
      <receiver typeCode="RCV"><device classCode="DEV" determinerCode="INSTANCE">
        <id root="1.2.250.1.213.4.1.1.1"/></device></receiver>
      <sender typeCode="SND"><device classCode="DEV" determinerCode="INSTANCE">
        <id root="1.2.250.1.999.42"/></device></sender>
      <controlActProcess classCode="CACT" moodCode="EVN">
        <reasonCode code="TEST_EXST" codeSystem="1.2.250.1.213.1.1.4.11"/>
        <queryByParameter><queryId root="1.2.250.1.999.42.2" extension="q1"/><statusCode code="new"/>
          <parameterList><patientIdentifier><value root="1.2.250.1.213.1.4.10" extension="{ins}"/>
          <semanticsText>Patient.id</semanticsText></patientIdentifier></parameterList></queryByParameter>
      </controlActProcess>
    </PRPA_IN201307UV02>""")
    return box.request("patients", TD02, body, patient=f"{ins}^^^&1.2.250.1.213.1.4.10&ISO^NH")


def authorisation(response: httpx.Response) -> str:
    body = body_of(response)
    assert body.tag == "{urn:hl7-org:v3}PRPA_IN201308UV02", response.text
    response_code = x(body, "hl7:controlActProcess/hl7:queryAck/hl7:queryResponseCode").get("code")
    if response_code == "NF":
        return "inconnu"
    observation = x(body, "//hl7:administrativeObservation[hl7:code/@code='AUTORISATION']")
    return str(x(observation, "hl7:value").get("code"))


def test_td02_answers_unknown_valid_or_forbidden(box: Box, sandbox: DmpSandbox) -> None:
    unknown, allowed, forbidden = "100000000000001", "100000000000002", "100000000000003"
    sandbox.add_patient(allowed)
    sandbox.add_patient(forbidden, authorised=False)
    assert authorisation(box.send(existence_request(box, unknown))) == "inconnu"
    assert authorisation(box.send(existence_request(box, allowed))) == "VALIDE"
    assert authorisation(box.send(existence_request(box, forbidden))) == "INTERDIT"


def test_td03_grants_access(box: Box, sandbox: DmpSandbox) -> None:
    ins = "100000000000004"
    sandbox.add_patient(ins, authorised=False)
    body = etree.fromstring(
        b'<setAuthorization xmlns="urn:si-dmp-habilitations"><action>AJOUT</action></setAuthorization>'
    )
    response = box.send(box.request("habilitations", TD03, body, patient=f"{ins}^^^&1.2.250.1.213.1.4.10&ISO^NH"))
    assert x(body_of(response), "*").text == "OK"
    assert authorisation(box.send(existence_request(box, ins))) == "VALIDE"
    unknown = box.request(
        "habilitations", TD03, copy.deepcopy(body), patient="100000000000099^^^&1.2.250.1.213.1.4.10&ISO^NH"
    )
    response = box.send(unknown)
    assert fault(response) == "soap:Sender" and "PATIENT_INCONNU" in response.text


# -- fault modes, counters, restarts --------------------------------------------------------------


def test_503_then_back(box: Box, sandbox: DmpSandbox) -> None:
    sandbox.set_fault("503", times=1)
    response = box.send(box.query())
    assert response.status_code == 503 and response.headers["content-type"].startswith("text/html")
    assert succeeded(box.send(box.query()))


def test_hang_until_released(sandbox: DmpSandbox, pki: PkiFiles) -> None:
    client = Box(sandbox, pki, timeout=1)
    try:
        sandbox.set_fault("hang", times=1)
        with pytest.raises(httpx.ReadTimeout):
            client.send(client.query())
        sandbox.set_fault("none")
        assert succeeded(client.send(client.query()))
    finally:
        client.close()


# As in test_publication's fault run: now and then httpcore drops a TLS connection the "down"
# fault reset without closing it, and the garbage collector finalises its socket during this test.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.filterwarnings("ignore:unclosed <ssl.SSLSocket:ResourceWarning")
def test_down_resets_connections(box: Box, sandbox: DmpSandbox) -> None:
    assert succeeded(box.send(box.query()))  # a kept-alive connection, dropped when the DMP goes down
    before = sandbox.faults["down"]
    sandbox.set_fault("down", times=2)
    for _ in range(4):  # the client may first try its dropped connection: one more failure, no reset counted
        if sandbox.faults["down"] == before + 2:
            break
        with pytest.raises((httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError)):
            box.send(box.query())
    assert sandbox.faults["down"] == before + 2
    assert succeeded(box.send(box.query()))


def test_refuse_n_times_then_accept(box: Box, sandbox: DmpSandbox) -> None:
    submission = box.provide()
    sandbox.set_fault("refuse", times=2, code="XDSRegistryBusy", only="ITI-41")
    before = sandbox.requests["ITI-41"]
    assert succeeded(box.send(box.query()))  # other transactions are not concerned
    assert codes(box.send(submission.request)) == ["XDSRegistryBusy"]
    assert codes(box.send(submission.request)) == ["XDSRegistryBusy"]
    assert succeeded(box.send(submission.request))
    assert sandbox.requests["ITI-41"] == before + 3


def test_bad_fault_settings(sandbox: DmpSandbox) -> None:
    for mode, options in (("flaky", {}), ("down", {"only": "ITI-41"}), ("503", {"times": 0})):
        with pytest.raises(ValueError):
            sandbox.set_fault(mode, **options)


def test_entries_survive_a_restart(pki: PkiFiles, tmp_path: Path) -> None:
    first = DmpSandbox(tmp_path, pki).start()
    client = Box(first, pki)
    try:
        submission = registered(client)
        port = first.port
        first.stop()
        with DmpSandbox(tmp_path, pki, port=port) as second:
            assert second.base_url == first.base_url
            client.close()
            client = Box(second, pki)
            assert submission.kos_uid in etree.tostring(body_of(client.send(client.query()))).decode()
            assert [e.status for e in second.entries() if e.unique_id == submission.kos_uid] == [APPROVED]
    finally:
        client.close()
        first.stop()


def test_unknown_path_and_method(box: Box, sandbox: DmpSandbox) -> None:
    assert box.http.post(f"{sandbox.base_url}/nothing", content=b"").status_code == 404
    assert box.http.get(f"{sandbox.base_url}/registry").status_code == 405


# -- parsers never fail outside their refusals ---------------------------------------------------


@given(
    st.binary(max_size=600),
    st.sampled_from(["multipart/related", "application/soap+xml", "text/plain"]),
    st.sampled_from(["", 'boundary="b"', 'boundary=b; type="application/xop+xml"; start-info="application/soap+xml"'])
    | st.text(max_size=60).map(
        lambda text: f'type="application/xop+xml"; start-info="application/soap+xml"; boundary={text}'
    ),
)
@settings(max_examples=300, deadline=None)
def test_mtom_reader_only_answers_faults(body: bytes, media: str, params: str) -> None:
    framed = b'--b\r\nContent-ID: <r>\r\nContent-Type: application/xop+xml; type="application/soap+xml"\r\n\r\n' + body
    for data in (body, framed, framed + b"\r\n--b--\r\n"):
        try:
            message = read_message(f"{media}; {params}", data)
            read_envelope(message.envelope, "registry", {"https://h/r"}, message.action)
        except Fault:
            pass


@given(st.text(max_size=80))
@settings(max_examples=300, deadline=None)
def test_stored_query_values_parse_or_refuse(raw: str) -> None:
    try:
        values = parse_values(raw)
    except ValueError:
        return
    assert values and all(isinstance(value, str) for value in values)
