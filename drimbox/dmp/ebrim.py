"""ebRIM 3.0 building blocks (Slot, Name, Classification, ExternalIdentifier) and XDS time values.

Namespaces and prefixes are fixed here, once, so every request the box sends declares them alike.
"""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime

from lxml import etree

from drimbox.report.model import Code

RIM = "urn:oasis:names:tc:ebxml-regrep:xsd:rim:3.0"
LCM = "urn:oasis:names:tc:ebxml-regrep:xsd:lcm:3.0"
RS = "urn:oasis:names:tc:ebxml-regrep:xsd:rs:3.0"
QUERY = "urn:oasis:names:tc:ebxml-regrep:xsd:query:3.0"
XDSB = "urn:ihe:iti:xds-b:2007"
XOP = "http://www.w3.org/2004/08/xop/include"
XML_LANG = "{http://www.w3.org/XML/1998/namespace}lang"
NAMESPACES = {"rim": RIM, "lcm": LCM, "rs": RS, "query": QUERY, "xdsb": XDSB}

_HL7_TS = re.compile(r"(\d{4}(?:\d{2}){0,5})(?:\.\d{1,4})?([+-]\d{4})?")


def qname(name: str) -> str:
    """`rim:Slot` → `{urn:...rim:3.0}Slot`."""
    prefix, local = name.split(":")
    return f"{{{NAMESPACES[prefix]}}}{local}"


def element(tag: str, **attributes: str) -> etree._Element:
    """A root element declaring every ebRIM/XDS prefix, so children need no declarations of their own."""
    return etree.Element(qname(tag), attributes, nsmap=NAMESPACES)


def sub(parent: etree._Element, tag: str, **attributes: str) -> etree._Element:
    return etree.SubElement(parent, qname(tag), attributes)


def new_id() -> str:
    return f"urn:uuid:{uuid.uuid4()}"


def slot(parent: etree._Element, name: str, *values: str) -> etree._Element:
    node = sub(parent, "rim:Slot", name=name)
    value_list = sub(node, "rim:ValueList")
    for value in values:
        sub(value_list, "rim:Value").text = value
    return node


def localized(parent: etree._Element, tag: str, value: str) -> etree._Element:
    """Name or Description as the DMP sample writes them (charset `UTF8`, xml:lang `FR`)."""
    node = sub(parent, tag)
    sub(node, "rim:LocalizedString", charset="UTF8", value=value).set(XML_LANG, "FR")
    return node


def coded(parent: etree._Element, scheme: str, object_id: str, code: Code) -> etree._Element:
    """A coded classification: nodeRepresentation, codingScheme slot, display name."""
    node = sub(
        parent,
        "rim:Classification",
        classificationScheme=scheme,
        classifiedObject=object_id,
        id=new_id(),
        nodeRepresentation=code.code,
    )
    slot(node, "codingScheme", code.system)
    localized(node, "rim:Name", code.display or code.code)
    return node


def external_identifier(parent: etree._Element, scheme: str, object_id: str, value: str, name: str) -> None:
    node = sub(
        parent,
        "rim:ExternalIdentifier",
        id=new_id(),
        identificationScheme=scheme,
        registryObject=object_id,
        value=value,
    )
    localized(node, "rim:Name", name)


def xds_time(moment: datetime) -> str:
    """UTC `YYYYMMDDhhmmss` (ITI TF-3 §4.2.3.1.6); a naive datetime is taken as this machine's local time."""
    return moment.astimezone(UTC).strftime("%Y%m%d%H%M%S")


def xds_time_from_hl7(value: str) -> str:
    """An HL7 TS (`20210104092200+0100`) as an XDS time, in UTC when the TS says its offset.

    Without an offset, or coarser than the hour, the digits are kept as written: converting would
    invent a time zone. An unreadable value gives "" (the slot is then left out).
    """
    match = _HL7_TS.fullmatch(value.strip())
    if match is None:
        return ""
    digits, offset = match.groups()
    if offset is None or len(digits) < 10:
        return digits
    local = datetime.strptime(digits.ljust(14, "0") + offset, "%Y%m%d%H%M%S%z")
    return local.astimezone(UTC).strftime("%Y%m%d%H%M%S")[: len(digits)]
