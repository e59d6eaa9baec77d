"""What the sandbox DMP answers: SOAP 1.2 envelopes with WS-Addressing, RegistryResponse,
AdhocQueryResponse, RetrieveDocumentSetResponse, HL7v3 and SOAP faults.

Two kinds of refusal, as the DMP (Apache CXF) gives them:

* `Refusal` → an ebRS answer with status Failure and a `RegistryErrorList` (HTTP 200). Used for
  everything about the content: metadata, documents, patient, registry state. Codes are the IHE
  ones (ITI TF-3 Table 4.2.4.1-2): XDSRegistryMetadataError, XDSRepositoryMetadataError,
  XDSMissingDocument, XDSMissingDocumentMetadata, XDSNonIdenticalHash, XDSNonIdenticalSize,
  XDSPatientIdDoesNotMatch, XDSUnknownPatientId, XDSDuplicateUniqueIdInRegistry,
  XDSRegistryDuplicateUniqueIdInMessage, XDSRegistryDeprecatedDocumentError, XDSUnknownStoredQuery,
  XDSStoredQueryMissingParam, XDSStoredQueryParamNumber, XDSMetadataUpdateError,
  XDSMetadataUpdateOperationError, XDSUnknownRepositoryId, XDSDocumentUniqueIdError,
  XDSRegistryError, and whatever `set_fault("refuse", code=…)` asks (XDSRegistryBusy by default).
* `Fault` → a SOAP 1.2 Fault (HTTP 500, as CXF sends every fault) for the message itself:
  envelope, MTOM framing (no subcode), WS-Addressing (`wsa:ActionNotSupported`,
  `wsa:MessageAddressingHeaderRequired`, `wsa:InvalidAddressingHeader`, `wsa:ActionMismatch`,
  `wsa:DestinationUnreachable` for a `wsa:To` that is not this endpoint), SOAP `env:MustUnderstand`,
  `env:VersionMismatch`, and WS-Security (`wsse:InvalidSecurity` missing or malformed VIHF,
  `wsse:InvalidSecurityToken` a VIHF attribute with a wrong value, `wsse:FailedCheck` a signature
  that does not verify, `wsse:UnsupportedAlgorithm` an algorithm not accepted, `wsse:FailedAuthentication`
  a certificate not chaining to IGC-Santé, revoked, or of another structure). The Detail carries
  `<dmp:erreur xmlns:dmp="urn:sandbox:si-dmp:erreur"><dmp:code/><dmp:libelle/></dmp:erreur>`: the
  sandbox's own vocabulary (the DMP integration guide that lists the real detail codes is not public),
  so clients must rely on the Code/Subcode, never on the detail.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from lxml import etree

from drimbox.sandbox.dmp.ebxml import (
    ERROR,
    FAILURE,
    HL7,
    QUERY,
    RIM,
    RS,
    SOAP,
    SUCCESS,
    WSA,
    WSSE,
    XDSB,
    XOP,
    Element,
    q,
)

DETAIL_NS = "urn:sandbox:si-dmp:erreur"


@dataclass(frozen=True)
class RegistryIssue:
    """One `rs:RegistryError`."""

    code: str
    context: str
    location: str = ""


class Refusal(Exception):
    """Answer Failure with these RegistryErrors."""

    def __init__(self, issues: Sequence[RegistryIssue]) -> None:
        super().__init__("; ".join(f"{issue.code}: {issue.context}" for issue in issues))
        self.issues = tuple(issues)


def refuse(code: str, context: str, location: str = "") -> Refusal:
    return Refusal([RegistryIssue(code, context, location)])


class Fault(Exception):
    """Answer a SOAP 1.2 Fault: `code` is Sender or Receiver, `subcode` a QName string (or '')."""

    def __init__(self, subcode: str, reason: str, *, code: str = "Sender", detail: str = "") -> None:
        super().__init__(f"{subcode}: {reason}")
        self.code, self.subcode, self.reason = code, subcode, reason
        self.detail = detail or subcode.rpartition(":")[2] or "REQUETE_INVALIDE"


@dataclass(frozen=True)
class Reply:
    """An answer: the SOAP envelope (or the HTML of a 503), its HTTP status, MTOM attachments if any."""

    content: bytes
    status: int = 200
    attachments: tuple[tuple[str, str, bytes], ...] = ()  # (content id, media type, bytes)


def envelope(action: str, relates_to: str, body: Element) -> bytes:
    """A SOAP 1.2 answer with the WS-Addressing headers of the response fixture."""
    env = etree.Element(q(SOAP, "Envelope"), nsmap={"soap": SOAP})
    header = etree.SubElement(env, q(SOAP, "Header"))
    for name, value in (("Action", action), ("MessageID", f"urn:uuid:{uuid.uuid4()}"), ("RelatesTo", relates_to)):
        if value:
            etree.SubElement(header, q(WSA, name), nsmap={None: WSA}).text = value
    etree.SubElement(env, q(SOAP, "Body")).append(body)
    return bytes(etree.tostring(env, xml_declaration=True, encoding="UTF-8"))


def registry_response(issues: Iterable[RegistryIssue] = ()) -> Element:
    issues = list(issues)
    response = etree.Element(q(RS, "RegistryResponse"), nsmap={"rs": RS}, status=FAILURE if issues else SUCCESS)
    _error_list(response, issues)
    return response


def query_response(objects: Sequence[Element], issues: Sequence[RegistryIssue] = ()) -> Element:
    """`query:AdhocQueryResponse` with `totalResultCount`, which the DMP sets and clients read."""
    response = etree.Element(q(QUERY, "AdhocQueryResponse"), nsmap={"query": QUERY, "rs": RS, "rim": RIM})
    response.set("status", FAILURE if issues else SUCCESS)
    if issues:
        _error_list(response, issues)
        return response
    response.set("startIndex", "0")
    response.set("totalResultCount", str(len(objects)))
    found = etree.SubElement(response, q(RIM, "RegistryObjectList"))
    found.extend(objects)
    return response


def retrieve_response(
    status: str, documents: Sequence[tuple[str, str, str, str]], issues: Sequence[RegistryIssue] = ()
) -> Element:
    """`xdsb:RetrieveDocumentSetResponse`; documents are (repository, uniqueId, mimeType, content id)."""
    response = etree.Element(q(XDSB, "RetrieveDocumentSetResponse"), nsmap={"xdsb": XDSB, "rs": RS})
    registry = etree.SubElement(response, q(RS, "RegistryResponse"), status=status)
    _error_list(registry, issues)
    for repository, unique_id, mime_type, content_id in documents:
        document = etree.SubElement(response, q(XDSB, "DocumentResponse"))
        etree.SubElement(document, q(XDSB, "RepositoryUniqueId")).text = repository
        etree.SubElement(document, q(XDSB, "DocumentUniqueId")).text = unique_id
        etree.SubElement(document, q(XDSB, "mimeType")).text = mime_type
        content = etree.SubElement(document, q(XDSB, "Document"))
        etree.SubElement(content, q(XOP, "Include"), nsmap={"xop": XOP}, href=f"cid:{content_id}")
    return response


def fault_envelope(fault: Fault, relates_to: str = "") -> bytes:
    """A SOAP 1.2 Fault (Code/Subcode, Reason in French as the DMP writes them, sandbox Detail)."""
    body = etree.Element(q(SOAP, "Fault"), nsmap={"soap": SOAP, "wsa": WSA, "wsse": WSSE})
    code = etree.SubElement(body, q(SOAP, "Code"))
    etree.SubElement(code, q(SOAP, "Value")).text = f"soap:{fault.code}"
    if fault.subcode:
        etree.SubElement(etree.SubElement(code, q(SOAP, "Subcode")), q(SOAP, "Value")).text = fault.subcode
    reason = etree.SubElement(body, q(SOAP, "Reason"))
    etree.SubElement(reason, q(SOAP, "Text"), {"{http://www.w3.org/XML/1998/namespace}lang": "fr"}).text = fault.reason
    detail = etree.SubElement(
        etree.SubElement(body, q(SOAP, "Detail")), q(DETAIL_NS, "erreur"), nsmap={"dmp": DETAIL_NS}
    )
    etree.SubElement(detail, q(DETAIL_NS, "code")).text = fault.detail
    etree.SubElement(detail, q(DETAIL_NS, "libelle")).text = fault.reason
    return envelope(f"{WSA}/fault", relates_to, body)


def hl7_element(name: str, **attributes: str) -> Element:
    return etree.Element(q(HL7, name), {key: value for key, value in attributes.items()}, nsmap={None: HL7})


def hl7_now() -> str:
    return datetime.now(UTC).strftime("%Y%m%d%H%M%S")


def _error_list(parent: Element, issues: Sequence[RegistryIssue]) -> None:
    if not issues:
        return
    errors = etree.SubElement(parent, q(RS, "RegistryErrorList"), highestSeverity=ERROR)
    for issue in issues:
        error = etree.SubElement(errors, q(RS, "RegistryError"), errorCode=issue.code, severity=ERROR)
        error.set("codeContext", issue.context)
        if issue.location:
            error.set("location", issue.location)
