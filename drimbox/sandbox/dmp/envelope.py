"""The SOAP 1.2 envelope and its WS-Addressing headers, checked as the DMP's CXF stack does.

DRIM-M §4.5: SOAP 1.2, `wsa:MessageID` (urn:uuid), `wsa:To` (the service URL), `wsa:Action` with
mustUnderstand="true" naming the transaction of the endpoint it was posted to. The samples write
`mustUnderstand` without the SOAP prefix and the DMP accepted them, so both spellings pass.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass

from lxml import etree

from drimbox.sandbox.dmp.answers import Fault
from drimbox.sandbox.dmp.ebxml import SOAP, SOAP11, WSA, WSSE, Element, MalformedXml, is_uuid_urn, parse_xml, q, text

ITI41 = "urn:ihe:iti:2007:ProvideAndRegisterDocumentSet-b"
ITI43 = "urn:ihe:iti:2007:RetrieveDocumentSet"
ITI18 = "urn:ihe:iti:2007:RegistryStoredQuery"
ITI57 = "urn:ihe:iti:2010:UpdateDocumentSet"
TD02 = "urn:hl7-org:v3:PRPA_IN201307UV02"
TD03 = "urn:si-dmp-habilitations:HabilitationsEndPoint:setAuthorization"

ENDPOINTS: Mapping[str, Mapping[str, str]] = {
    "repository": {ITI41: "ITI-41", ITI43: "ITI-43"},
    "registry": {ITI18: "ITI-18", ITI57: "ITI-57"},
    "patients": {TD02: "TD0.2"},
    "habilitations": {TD03: "TD0.3"},
}
RESPONSE_ACTIONS = {
    "ITI-41": "urn:ihe:iti:2007:ProvideAndRegisterDocumentSet-bResponse",
    "ITI-43": "urn:ihe:iti:2007:RetrieveDocumentSetResponse",
    "ITI-18": "urn:ihe:iti:2007:RegistryStoredQueryResponse",
    "ITI-57": "urn:ihe:iti:2010:UpdateDocumentSetResponse",
    "TD0.2": "urn:hl7-org:v3:PRPA_IN201308UV02",
    "TD0.3": "urn:si-dmp-habilitations:HabilitationsEndPoint:setAuthorizationResponse",
}
_UNDERSTOOD = frozenset({WSA, WSSE})
_TRUE = frozenset({"true", "1"})


@dataclass(frozen=True)
class Envelope:
    header: Element
    body: Element  # the one element inside soap:Body
    action: str
    transaction: str
    message_id: str
    to: str

    @property
    def security(self) -> list[Element]:
        return self.header.findall(q(WSSE, "Security"))


def message_id_of(data: bytes) -> str:
    """Best effort, for RelatesTo on a fault about an envelope we could not accept."""
    try:
        return text(parse_xml(data).find(f"{q(SOAP, 'Header')}/{q(WSA, 'MessageID')}"))
    except MalformedXml:
        return ""


def read_envelope(data: bytes, endpoint: str, urls: Collection[str], http_action: str) -> Envelope:
    """The checked envelope of a request posted to `endpoint` ("repository", "registry"…), whose
    `wsa:To` must be one of `urls`."""
    try:
        root = parse_xml(data)
    except MalformedXml as exc:
        raise Fault("", f"message SOAP illisible : {exc}", detail="XML_MAL_FORME") from None
    if root.tag == q(SOAP11, "Envelope"):
        raise Fault("", "SOAP 1.1 n'est pas accepté, SOAP 1.2 attendu", code="VersionMismatch")
    children = list(root.iterchildren("{*}*"))
    if root.tag != q(SOAP, "Envelope") or [child.tag for child in children] != [q(SOAP, "Header"), q(SOAP, "Body")]:
        raise Fault("", "enveloppe SOAP 1.2 attendue (soap:Header puis soap:Body)", detail="ENVELOPPE")
    header, body = children
    _check_must_understand(header)
    action_element = _one(header, "Action")
    action = text(action_element)
    if _must_understand(action_element) not in _TRUE:
        raise Fault("wsa:InvalidAddressingHeader", 'wsa:Action doit porter mustUnderstand="true"')
    message_id, to = text(_one(header, "MessageID")), text(_one(header, "To"))
    if not is_uuid_urn(message_id.lower()):
        raise Fault("wsa:InvalidAddressingHeader", f"wsa:MessageID {message_id[:80]!r} n'est pas un urn:uuid")
    transaction = ENDPOINTS[endpoint].get(action)
    if transaction is None:
        raise Fault("wsa:ActionNotSupported", f"action {action[:120]!r} non prise en charge par /{endpoint}")
    if http_action and http_action != action:
        raise Fault("wsa:ActionMismatch", f"action HTTP {http_action[:120]!r} différente de wsa:Action")
    if to not in urls:
        raise Fault("wsa:DestinationUnreachable", f"wsa:To {to[:200]!r} ne désigne pas ce service")
    payload = list(body.iterchildren("{*}*"))
    if len(payload) != 1:
        raise Fault("", "soap:Body doit contenir exactement un élément", detail="ENVELOPPE")
    return Envelope(header, payload[0], action, transaction, message_id, to)


def _one(header: Element, name: str) -> Element:
    found = header.findall(q(WSA, name))
    if not found:
        raise Fault("wsa:MessageAddressingHeaderRequired", f"en-tête wsa:{name} absent")
    if len(found) > 1:
        raise Fault("wsa:InvalidAddressingHeader", f"en-tête wsa:{name} répété")
    return found[0]


def _must_understand(element: Element) -> str:
    return (element.get(q(SOAP, "mustUnderstand")) or element.get("mustUnderstand") or "").strip().lower()


def _check_must_understand(header: Element) -> None:
    for block in header.iterchildren("{*}*"):
        name = etree.QName(block)
        if name.namespace not in _UNDERSTOOD and block.get(q(SOAP, "mustUnderstand"), "").lower() in _TRUE:
            raise Fault("", f"en-tête {name.text} non compris", code="MustUnderstand")
