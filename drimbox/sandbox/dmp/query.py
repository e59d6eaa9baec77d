"""ITI-18 Registry Stored Query: FindDocuments, FindDocumentsByReferenceId and GetDocuments, the
three queries a DRIM-M box sends (DRIM-M §4.8), with IHE's parameter rules (ITI TF-2a §3.18.4.1.2):
values quoted `'…'` or lists `('…','…')`, single-valued parameters given once
(XDSStoredQueryParamNumber), required ones present (XDSStoredQueryMissingParam), unknown query ids
refused (XDSUnknownStoredQuery). Parameters the sandbox does not implement are refused with
XDSRegistryError rather than ignored, so a filter never silently widens a result.

Find* queries must name the VIHF's patient (resource-id), else XDSPatientIdDoesNotMatch;
GetDocuments only returns entries of that patient, as the DMP hides other records.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from lxml import etree

from drimbox.sandbox.dmp.answers import Fault, refuse
from drimbox.sandbox.dmp.context import Context
from drimbox.sandbox.dmp.ebxml import (
    DE_CLASS,
    DE_CONFIDENTIALITY,
    DE_EVENT,
    DE_FACILITY,
    DE_FORMAT,
    DE_PRACTICE,
    DE_TYPE,
    QUERY,
    RIM,
    STABLE_ENTRY,
    Element,
    parse_xml,
    q,
    slots,
)
from drimbox.sandbox.dmp.rules import patient_ins
from drimbox.sandbox.dmp.store import StoredEntry

FIND_DOCUMENTS = "urn:uuid:14d4debf-8f97-4251-9a74-a90016b0af0d"
FIND_BY_REFERENCE_ID = "urn:uuid:12941a89-e02e-4be5-967c-ce4bfc8fe492"
GET_DOCUMENTS = "urn:uuid:5c4f972b-d56b-40ac-a5fc-c8ca9b40b9d4"
CODE_PARAMETERS = {
    "$XDSDocumentEntryClassCode": DE_CLASS,
    "$XDSDocumentEntryTypeCode": DE_TYPE,
    "$XDSDocumentEntryFormatCode": DE_FORMAT,
    "$XDSDocumentEntryPracticeSettingCode": DE_PRACTICE,
    "$XDSDocumentEntryHealthcareFacilityTypeCode": DE_FACILITY,
    "$XDSDocumentEntryEventCodeList": DE_EVENT,
    "$XDSDocumentEntryConfidentialityCode": DE_CONFIDENTIALITY,
}
_AND_SEMANTICS = {"$XDSDocumentEntryEventCodeList", "$XDSDocumentEntryConfidentialityCode"}
_FIND = {"$XDSDocumentEntryPatientId", "$XDSDocumentEntryStatus", "$XDSDocumentEntryCreationTimeFrom"}
_FIND |= {"$XDSDocumentEntryCreationTimeTo", "$XDSDocumentEntryType", *CODE_PARAMETERS}
ALLOWED = {
    FIND_DOCUMENTS: _FIND,
    FIND_BY_REFERENCE_ID: _FIND | {"$XDSDocumentEntryReferenceIdList"},
    GET_DOCUMENTS: {"$XDSDocumentEntryUniqueId", "$XDSDocumentEntryEntryUUID", "$homeCommunityId", "$MetadataLevel"},
}
_SCALAR = re.compile(r"'((?:[^']|'')*)'|(-?\d+)")


def query(context: Context) -> tuple[list[Element], str]:
    """The objects found and the returnType; raises Refusal for an invalid query."""
    request = context.envelope.body
    option, adhoc = request.find(q(QUERY, "ResponseOption")), request.find(q(RIM, "AdhocQuery"))
    if request.tag != q(QUERY, "AdhocQueryRequest") or option is None or adhoc is None:
        raise Fault(
            "", "query:AdhocQueryRequest avec ResponseOption et rim:AdhocQuery attendu", detail="CORPS_INATTENDU"
        )
    return_type = option.get("returnType", "")
    if return_type not in ("LeafClass", "ObjectRef"):
        raise refuse("XDSRegistryError", f"returnType {return_type!r} non pris en charge (LeafClass, ObjectRef)")
    query_id = adhoc.get("id", "")
    if query_id not in ALLOWED:
        raise refuse("XDSUnknownStoredQuery", f"requête stockée inconnue {query_id}")
    try:
        parameters = {name: [parse_values(raw) for raw in raws] for name, raws in slots(adhoc).items()}
    except ValueError as exc:
        raise refuse("XDSStoredQueryParamNumber", f"paramètre mal formé ou répété : {exc}") from None
    unknown = parameters.keys() - ALLOWED[query_id]
    if unknown:
        raise refuse("XDSRegistryError", f"paramètre(s) non pris en charge : {', '.join(sorted(unknown))}")
    if query_id == GET_DOCUMENTS:
        found = _get_documents(context, parameters)
    else:
        found = _find_documents(context, parameters, by_reference=query_id == FIND_BY_REFERENCE_ID)
    return [_object(entry, return_type) for entry in found], return_type


def _find_documents(
    context: Context, parameters: dict[str, list[list[str]]], *, by_reference: bool
) -> list[StoredEntry]:
    patient = _single(parameters, "$XDSDocumentEntryPatientId")
    statuses = [value for values in _required(parameters, "$XDSDocumentEntryStatus") for value in values]
    if patient_ins(patient, context.rules.ins_oids) is None:
        raise refuse("XDSRegistryError", "$XDSDocumentEntryPatientId : INS^^^&OID&ISO^NH attendu")
    if patient != context.vihf.resource_id:
        raise refuse("XDSPatientIdDoesNotMatch", "le patient demandé n'est pas le resource-id du VIHF")
    references = [value for values in parameters.get("$XDSDocumentEntryReferenceIdList", []) for value in values]
    if by_reference and not references:
        raise refuse("XDSStoredQueryMissingParam", "$XDSDocumentEntryReferenceIdList obligatoire")
    types = [value for values in parameters.get("$XDSDocumentEntryType", [[STABLE_ENTRY]]) for value in values]
    found = context.store.entries(
        f"WHERE patient_id = ? AND status IN ({', '.join('?' * len(statuses))})", (patient, *statuses)
    )
    tests: list[Callable[[StoredEntry], bool]] = [lambda entry: STABLE_ENTRY in types]
    if references:
        tests.append(lambda entry: bool(set(entry.reference_ids) & set(references)))
    for name, scheme in CODE_PARAMETERS.items():
        tests += _code_tests(parameters.get(name, []), scheme, and_semantics=name in _AND_SEMANTICS)
    low = _time(parameters, "$XDSDocumentEntryCreationTimeFrom")
    high = _time(parameters, "$XDSDocumentEntryCreationTimeTo")
    if low:
        tests.append(lambda entry: entry.creation_time.ljust(14, "0") >= low)
    if high:
        tests.append(lambda entry: entry.creation_time.ljust(14, "0") < high)
    return [entry for entry in found if all(test(entry) for test in tests)]


def _get_documents(context: Context, parameters: dict[str, list[list[str]]]) -> list[StoredEntry]:
    by_unique = [value for values in parameters.get("$XDSDocumentEntryUniqueId", []) for value in values]
    by_uuid = [value for values in parameters.get("$XDSDocumentEntryEntryUUID", []) for value in values]
    if bool(by_unique) == bool(by_uuid):
        raise refuse("XDSStoredQueryParamNumber", "$XDSDocumentEntryUniqueId ou $XDSDocumentEntryEntryUUID (un seul)")
    if parameters.get("$MetadataLevel", [["1"]]) != [["1"]]:
        raise refuse("XDSRegistryMetadataError", "$MetadataLevel 1 seulement")
    column, values = ("unique_id", by_unique) if by_unique else ("entry_uuid", by_uuid)
    found = context.store.entries(f"WHERE {column} IN ({', '.join('?' * len(values))})", values)
    return [entry for entry in found if entry.patient_id == context.vihf.resource_id]


def _code_tests(values: list[list[str]], scheme: str, *, and_semantics: bool) -> list[Callable[[StoredEntry], bool]]:
    """One test per Value element (AND between them for event and confidentiality codes), each an OR."""
    groups = [[_code(value) for value in group] for group in values]
    if not and_semantics:
        groups = [[code for group in groups for code in group]] if groups else []

    def matches(group: list[tuple[str, str]]) -> Callable[[StoredEntry], bool]:
        return lambda entry: any((scheme, code, coding) in entry.codes for code, coding in group)

    return [matches(group) for group in groups]


def _code(value: str) -> tuple[str, str]:
    code, separator, coding_scheme = value.partition("^^")
    if not separator or not code or not coding_scheme:
        raise refuse("XDSRegistryError", f"code {value!r} : forme code^^codingScheme attendue")
    return code, coding_scheme


def _object(entry: StoredEntry, return_type: str) -> Element:
    if return_type == "ObjectRef":
        return etree.Element(q(RIM, "ObjectRef"), id=entry.entry_uuid)
    element = parse_xml(entry.metadata.encode("utf-8"))
    element.set("status", entry.status)
    return element


def parse_values(raw: str) -> list[str]:
    """`'a'`, `123` or `('a','b')` → ['a', 'b'] (ITI TF-2a §3.18.4.1.2.3.5)."""
    raw = raw.strip()
    inner = raw[1:-1] if raw.startswith("(") and raw.endswith(")") else raw
    values, position = [], 0
    while True:
        match = _SCALAR.match(inner, position)
        if match is None:
            raise ValueError(f"valeur {raw[:80]!r}")
        values.append(match.group(1).replace("''", "'") if match.group(1) is not None else match.group(2))
        position = match.end()
        rest = inner[position:].lstrip()
        if not rest:
            return values
        if not rest.startswith(",") or inner is raw:
            raise ValueError(f"valeur {raw[:80]!r}")
        position = len(inner) - len(rest) + 1
        while position < len(inner) and inner[position] == " ":
            position += 1


def _required(parameters: dict[str, list[list[str]]], name: str) -> list[list[str]]:
    if name not in parameters:
        raise refuse("XDSStoredQueryMissingParam", f"{name} obligatoire")
    return parameters[name]


def _single(parameters: dict[str, list[list[str]]], name: str) -> str:
    values = _required(parameters, name)
    if len(values) != 1 or len(values[0]) != 1:
        raise refuse("XDSStoredQueryParamNumber", f"{name} n'accepte qu'une valeur")
    return values[0][0]


def _time(parameters: dict[str, list[list[str]]], name: str) -> str:
    if name not in parameters:
        return ""
    value = _single(parameters, name)
    if not re.fullmatch(r"\d{4,14}", value):
        raise refuse("XDSRegistryError", f"{name} : date DTM attendue")
    return value.ljust(14, "0")
