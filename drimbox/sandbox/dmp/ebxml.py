"""Namespaces, identifiers and small readers of ebXML RIM 3.0 as XDS.b uses it (IHE ITI TF-3 §4.2).

Every parse goes through `parse_xml`: no DTD, no entities, no network, so a hostile message cannot
make the sandbox read files or loop (the DMP is a public service and must resist the same).
"""

from __future__ import annotations

import re

from lxml import etree

SOAP = "http://www.w3.org/2003/05/soap-envelope"
SOAP11 = "http://schemas.xmlsoap.org/soap/envelope/"
WSA = "http://www.w3.org/2005/08/addressing"
WSSE = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd"
SAML = "urn:oasis:names:tc:SAML:2.0:assertion"
DS = "http://www.w3.org/2000/09/xmldsig#"
XADES = "http://uri.etsi.org/01903/v1.1.1#"
XOP = "http://www.w3.org/2004/08/xop/include"
RIM = "urn:oasis:names:tc:ebxml-regrep:xsd:rim:3.0"
RS = "urn:oasis:names:tc:ebxml-regrep:xsd:rs:3.0"
LCM = "urn:oasis:names:tc:ebxml-regrep:xsd:lcm:3.0"
QUERY = "urn:oasis:names:tc:ebxml-regrep:xsd:query:3.0"
XDSB = "urn:ihe:iti:xds-b:2007"
HL7 = "urn:hl7-org:v3"
XSI = "http://www.w3.org/2001/XMLSchema-instance"
HABILITATIONS = "urn:si-dmp-habilitations"

# Classification schemes and identification schemes (ITI TF-3 Table 4.2.5-1)
SUBMISSION_SET_NODE = "urn:uuid:a54d6aa5-d40d-43f9-88c5-b4633d873bdd"
FOLDER_NODE = "urn:uuid:d9d542f3-6cc4-48b6-8870-ea235fbc94c2"
STABLE_ENTRY = "urn:uuid:7edca82f-054d-47f2-a032-9b2a5b5186c1"
SS_AUTHOR = "urn:uuid:a7058bb9-b4e4-4307-ba5b-e3f0ab85e12d"
SS_CONTENT_TYPE = "urn:uuid:aa543740-bdda-424e-8c96-df4873be8500"
SS_PATIENT_ID = "urn:uuid:6b5aea1a-874d-4603-a4bc-96a0a7b38446"
SS_SOURCE_ID = "urn:uuid:554ac39e-e3fe-47fe-b233-965d2a147832"
SS_UNIQUE_ID = "urn:uuid:96fdda7c-d067-4183-912e-bf5ee74998a8"
DE_AUTHOR = "urn:uuid:93606bcf-9494-43ec-9b4e-a7748d1a838d"
DE_CLASS = "urn:uuid:41a5887f-8865-4c09-adf7-e362475b143a"
DE_TYPE = "urn:uuid:f0306f51-975f-434e-a61c-c59651d33983"
DE_CONFIDENTIALITY = "urn:uuid:f4f85eac-e6cb-4883-b524-f2705394840f"
DE_FORMAT = "urn:uuid:a09d5840-386c-46f2-b5ad-9c3699a4309d"
DE_FACILITY = "urn:uuid:f33fb8ac-18af-42cc-ae0e-ed0b0bdb91e1"
DE_PRACTICE = "urn:uuid:cccf5598-8b07-4b77-a05e-ae952c785ead"
DE_EVENT = "urn:uuid:2c6b8cb7-8b2a-4051-b291-b1ae6a575ef4"
DE_PATIENT_ID = "urn:uuid:58a6f841-87b3-4a3e-92fd-a8ffeff98427"
DE_UNIQUE_ID = "urn:uuid:2e82c1f6-a085-4c72-9da3-8640a32e42ab"
CODED_SCHEMES = {
    DE_CLASS: "classCode",
    DE_TYPE: "typeCode",
    DE_CONFIDENTIALITY: "confidentialityCode",
    DE_FORMAT: "formatCode",
    DE_FACILITY: "healthcareFacilityTypeCode",
    DE_PRACTICE: "practiceSettingCode",
    DE_EVENT: "eventCodeList",
}

HAS_MEMBER = "urn:oasis:names:tc:ebxml-regrep:AssociationType:HasMember"
SIGNS = "urn:ihe:iti:2007:AssociationType:signs"
RPLC = "urn:ihe:iti:2007:AssociationType:RPLC"
UPDATE_STATUS = "urn:ihe:iti:2010:AssociationType:UpdateAvailabilityStatus"

APPROVED = "urn:oasis:names:tc:ebxml-regrep:StatusType:Approved"
DEPRECATED = "urn:oasis:names:tc:ebxml-regrep:StatusType:Deprecated"
DELETED = "urn:asip:ci-sis:2010:StatusType:Deleted"  # the DMP's own status (DRIM-M §4.8)
STATUSES = (APPROVED, DEPRECATED, DELETED)

SUCCESS = "urn:oasis:names:tc:ebxml-regrep:ResponseStatusType:Success"
FAILURE = "urn:oasis:names:tc:ebxml-regrep:ResponseStatusType:Failure"
PARTIAL_SUCCESS = "urn:ihe:iti:2007:ResponseStatusType:PartialSuccess"
ERROR = "urn:oasis:names:tc:ebxml-regrep:ErrorSeverityType:Error"

_UUID_URN = re.compile(r"urn:uuid:[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_PARSER = etree.XMLParser(
    resolve_entities=False,
    no_network=True,
    load_dtd=False,
    dtd_validation=False,
    huge_tree=False,
    remove_comments=False,
)

Element = etree._Element


class MalformedXml(ValueError):
    """Bytes that are not one well-formed XML document without DTD."""


def parse_xml(data: bytes) -> Element:
    try:
        root = etree.fromstring(data, _PARSER)
    except etree.XMLSyntaxError as exc:
        raise MalformedXml(f"not well-formed XML: {exc}") from None
    if root.getroottree().docinfo.doctype:
        raise MalformedXml("a DOCTYPE is not allowed")
    return root


def q(namespace: str, name: str) -> str:
    """Clark notation `{namespace}name`, as lxml spells qualified names."""
    return f"{{{namespace}}}{name}"


def is_uuid_urn(value: str) -> bool:
    return _UUID_URN.fullmatch(value) is not None


def text(element: Element | None) -> str:
    return "" if element is None else (element.text or "").strip()


def slots(element: Element) -> dict[str, list[str]]:
    """The element's own `rim:Slot`s (name → values); a repeated name raises ValueError."""
    found: dict[str, list[str]] = {}
    for slot in element.findall(q(RIM, "Slot")):
        name = slot.get("name", "")
        if not name or name in found:
            raise ValueError(f"slot {name!r} is unnamed or given twice")
        found[name] = [text(value) for value in slot.iterfind(f"{q(RIM, 'ValueList')}/{q(RIM, 'Value')}")]
    return found


def localized(element: Element, child: str = "Name") -> str:
    """The first LocalizedString value of a Name/Description child ('' when absent)."""
    string = element.find(f"{q(RIM, child)}/{q(RIM, 'LocalizedString')}")
    return "" if string is None else string.get("value", "")


def dtm(value: str) -> bool:
    """An HL7 DTM as XDS uses it: YYYY[MM[DD[hh[mm[ss]]]]], UTC."""
    return re.fullmatch(r"\d{4}(\d{2}){0,5}", value) is not None and len(value) in (4, 6, 8, 10, 12, 14)
