"""What the DMP answers: SOAP 1.2 Faults, RegistryResponse, AdhocQueryResponse, as core errors.

The outbox must tell "retry later" from "fix the data" (style: errors): a Receiver fault, an answer
we cannot read or a status we do not know is `DmpUnavailable` (the outcome is unknown); a Sender
fault or a Failure status is `DmpRefused` carrying the registry's own codes.
"""

from __future__ import annotations

from dataclasses import dataclass

from lxml import etree

from drimbox.dmp import codes
from drimbox.dmp.ebrim import QUERY, RIM, RS
from drimbox.dmp.soap import SOAP
from drimbox.errors import DmpRefused, DmpUnavailable
from drimbox.publish.submission import DmpEntry, DmpIssue

SUCCESS = "urn:oasis:names:tc:ebxml-regrep:ResponseStatusType:Success"
FAILURE = "urn:oasis:names:tc:ebxml-regrep:ResponseStatusType:Failure"
PARTIAL_SUCCESS = "urn:ihe:iti:2007:ResponseStatusType:PartialSuccess"
#: The SOAP 1.2 fault code that says the fault is the server's, not the message's (SOAP 1.2 part 1 §5.4.6).
_RECEIVER = "Receiver"
_PARSER = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False, huge_tree=False)


class UnreadableAnswer(DmpUnavailable):
    """The answer is not a SOAP 1.2 envelope at all (HTML error page, empty body, garbage)."""


@dataclass(frozen=True)
class RegistryOutcome:
    """A Success or PartialSuccess answer; `issues` are the warnings (and errors) it listed."""

    status: str
    issues: tuple[DmpIssue, ...] = ()

    @property
    def partial(self) -> bool:
        return self.status == PARTIAL_SUCCESS


def soap_body(payload: bytes) -> etree._Element:
    """The first element of the SOAP 1.2 Body; a Fault raises instead."""
    try:
        root = etree.fromstring(payload, _PARSER)
    except etree.XMLSyntaxError as exc:
        raise UnreadableAnswer(f"the DMP answered something that is not XML: {exc}") from exc
    if root.getroottree().docinfo.doctype:
        raise UnreadableAnswer("the DMP answered a document with a DTD, which SOAP 1.2 forbids (part 1 §5)")
    if root.tag != f"{{{SOAP}}}Envelope":
        raise UnreadableAnswer(f"the DMP answered {etree.QName(root).localname!r}, not a SOAP 1.2 Envelope")
    body = root.find(f"{{{SOAP}}}Body")
    content = None if body is None else next((c for c in body if isinstance(c.tag, str)), None)
    if content is None:
        raise DmpUnavailable("the DMP answered an empty SOAP Body")
    if content.tag == f"{{{SOAP}}}Fault":
        raise fault_error(content)
    return content


def fault_error(fault: etree._Element) -> DmpRefused | DmpUnavailable:
    """A SOAP 1.2 Fault as a core error: Receiver → unavailable, every other code → refused.

    The issue's code is the most specific Subcode (or the Code), its context the Reason text.
    """
    values = fault.xpath("s:Code//s:Value", namespaces={"s": SOAP})
    names = [_qname_text(v) for v in values if isinstance(v, etree._Element)]
    code = names[0] if names else "Unknown"
    reason = " ".join(
        t.strip() for t in fault.xpath("s:Reason/s:Text/text()", namespaces={"s": SOAP}) if isinstance(t, str)
    )
    message = f"the DMP answered a SOAP fault {'/'.join(names) or code}: {reason}".strip()
    if code.rpartition(":")[2] == _RECEIVER:
        return DmpUnavailable(message)
    return DmpRefused(message, (DmpIssue(names[-1] if names else code, reason, location="soap:Fault"),))


#: Failure codes that say "not now" rather than "no" (IHE ITI TF-3 Table 4.2.4.1-2): retried.
TEMPORARY = frozenset({"XDSRegistryBusy", "XDSRepositoryBusy", "XDSRegistryOutOfResources",
                       "XDSRepositoryOutOfResources"})  # fmt: skip


def registry_outcome(response: etree._Element) -> RegistryOutcome:
    """Judge a RegistryResponse (or the status of an AdhocQueryResponse): Failure raises DmpRefused."""
    status = response.get("status", "")
    issues = tuple(
        DmpIssue(
            code=error.get("errorCode", ""),
            context=error.get("codeContext", "") or (error.text or "").strip(),
            severity=error.get("severity", DmpIssue.severity),
            location=error.get("location", ""),
        )
        for error in response.iterfind(f"{{{RS}}}RegistryErrorList/{{{RS}}}RegistryError")
    )
    if status == FAILURE:
        summary = "; ".join(f"{i.code}: {i.context}" for i in issues) or "no RegistryError given"
        if issues and all(i.code in TEMPORARY for i in issues):
            raise DmpUnavailable(f"the DMP is busy ({summary})")
        raise DmpRefused(f"the DMP refused the request ({summary})", issues)
    if status not in (SUCCESS, PARTIAL_SUCCESS):
        raise DmpUnavailable(f"the DMP answered an unknown status {status!r}")
    return RegistryOutcome(status, issues)


def expect(response: etree._Element, namespace: str, name: str) -> etree._Element:
    if response.tag != f"{{{namespace}}}{name}":
        raise DmpUnavailable(f"the DMP answered {etree.QName(response).localname!r} where {name} was due")
    return response


def registry_response(payload: bytes) -> RegistryOutcome:
    """The outcome of an ITI-41 or ITI-57 answer."""
    return registry_outcome(expect(soap_body(payload), RS, "RegistryResponse"))


def query_entries(payload: bytes) -> tuple[DmpEntry, ...]:
    """The DocumentEntries of an ITI-18 answer (LeafClass; ObjectRef answers give the entryUUID only)."""
    response = expect(soap_body(payload), QUERY, "AdhocQueryResponse")
    registry_outcome(response)
    objects = response.find(f"{{{RIM}}}RegistryObjectList")
    if objects is None:
        return ()
    entries = [_entry(extrinsic) for extrinsic in objects.iterfind(f"{{{RIM}}}ExtrinsicObject")]
    entries += [DmpEntry(entry_uuid=ref.get("id", ""), unique_id="") for ref in objects.iterfind(f"{{{RIM}}}ObjectRef")]
    return tuple(entry for entry in entries if entry.entry_uuid)


def _entry(extrinsic: etree._Element) -> DmpEntry:
    unique_id = ""
    for identifier in extrinsic.iterfind(f"{{{RIM}}}ExternalIdentifier"):
        if identifier.get("identificationScheme") == codes.ENTRY_UNIQUE_ID:
            unique_id = identifier.get("value", "")
    repository = extrinsic.xpath(
        "string(r:Slot[@name='repositoryUniqueId']/r:ValueList/r:Value)", namespaces={"r": RIM}
    )
    return DmpEntry(
        entry_uuid=extrinsic.get("id", ""),
        unique_id=unique_id,
        status=extrinsic.get("status", ""),
        repository_unique_id=str(repository).strip(),
    )


def _qname_text(value: etree._Element) -> str:
    """`env:Sender` → `Sender` when the prefix is SOAP's; other QNames keep their prefix as written."""
    text = (value.text or "").strip()
    prefix, _, local = text.rpartition(":")
    if prefix and value.nsmap.get(prefix) == SOAP:
        return local
    return text
