"""Reading an ITI-41 ProvideAndRegisterDocumentSet-b body into submission set, document entries,
associations and document bytes (IHE ITI TF-2b §3.41, TF-3 §4.2), with every structural problem
collected as a RegistryError before any content rule runs (`rules.py`).

Structure only: ids unique in the message, exactly one SubmissionSet (no Folder), stable
DocumentEntries, each classification and external identifier attached to its own object, each
`xdsb:Document` an `xop:Include` of an MTOM part (XDSMissingDocument) matching an ExtrinsicObject
and every part matching a Document (XDSMissingDocumentMetadata).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from lxml import etree

from drimbox.sandbox.dmp.answers import Fault, Refusal, RegistryIssue
from drimbox.sandbox.dmp.ebxml import (
    CODED_SCHEMES,
    DE_AUTHOR,
    DE_PATIENT_ID,
    DE_UNIQUE_ID,
    LCM,
    RIM,
    SS_AUTHOR,
    SS_CONTENT_TYPE,
    SS_PATIENT_ID,
    SS_SOURCE_ID,
    SS_UNIQUE_ID,
    SUBMISSION_SET_NODE,
    XDSB,
    XOP,
    Element,
    localized,
    q,
    slots,
    text,
)
from drimbox.sandbox.dmp.mtom import Part, include_target

METADATA = "XDSRegistryMetadataError"


@dataclass(frozen=True)
class Code:
    code: str
    scheme: str
    name: str


@dataclass
class RegistryObject:
    """What a SubmissionSet and a DocumentEntry share: id, slots, codes, external identifiers."""

    id: str
    element: Element
    slots: dict[str, list[str]] = field(default_factory=dict)
    codes: dict[str, list[Code]] = field(default_factory=dict)  # classification scheme → codes
    identifiers: dict[str, str] = field(default_factory=dict)  # identification scheme → value
    authors: list[dict[str, list[str]]] = field(default_factory=list)

    def slot(self, name: str) -> str:
        values = self.slots.get(name, [])
        return values[0] if len(values) == 1 else ""

    def code(self, scheme: str) -> Code | None:
        codes = self.codes.get(scheme, [])
        return codes[0] if len(codes) == 1 else None


@dataclass
class DocumentEntry(RegistryObject):
    mime_type: str = ""
    object_type: str = ""
    document: bytes | None = None

    @property
    def unique_id(self) -> str:
        return self.identifiers.get(DE_UNIQUE_ID, "")

    @property
    def patient_id(self) -> str:
        return self.identifiers.get(DE_PATIENT_ID, "")


@dataclass
class SubmissionSet(RegistryObject):
    @property
    def unique_id(self) -> str:
        return self.identifiers.get(SS_UNIQUE_ID, "")

    @property
    def patient_id(self) -> str:
        return self.identifiers.get(SS_PATIENT_ID, "")

    @property
    def source_id(self) -> str:
        return self.identifiers.get(SS_SOURCE_ID, "")


@dataclass(frozen=True)
class Association:
    id: str
    type: str
    source: str
    target: str
    slots: dict[str, list[str]]
    element: Element


@dataclass
class Submission:
    submission_set: SubmissionSet
    entries: list[DocumentEntry]
    associations: list[Association]


class Problems:
    """RegistryErrors gathered during one phase, raised together (the DMP lists them all)."""

    def __init__(self) -> None:
        self.issues: list[RegistryIssue] = []

    def add(self, code: str, context: str, location: str = "") -> None:
        self.issues.append(RegistryIssue(code, context, location))

    def raise_any(self) -> None:
        if self.issues:
            raise Refusal(self.issues)


def read_registry_objects(request: Element, problems: Problems) -> tuple[list[Element], list[Element], list[Element]]:
    """(packages, extrinsic objects, associations) of an `lcm:SubmitObjectsRequest`."""
    if request.tag != q(LCM, "SubmitObjectsRequest"):
        raise Fault("", "lcm:SubmitObjectsRequest attendu", detail="CORPS_INATTENDU")
    objects = request.find(q(RIM, "RegistryObjectList"))
    if objects is None:
        raise Fault("", "rim:RegistryObjectList absent", detail="CORPS_INATTENDU")
    found: dict[str, list[Element]] = {"RegistryPackage": [], "ExtrinsicObject": [], "Association": []}
    seen: set[str] = set()
    for element in objects.iterchildren("{*}*"):
        qname = etree.QName(element)
        name = qname.localname
        if qname.namespace == RIM and name in found:
            found[name].append(element)
        elif element.tag != q(RIM, "Classification"):  # top-level classifications are read with their package
            problems.add(METADATA, f"objet {name} non accepté dans une soumission", element.get("id", ""))
    for element in objects.iter(q(RIM, "*")):
        identifier = element.get("id")
        if identifier is not None and (not identifier or identifier in seen):
            problems.add(METADATA, f"identifiant {identifier!r} vide ou répété dans le message", identifier)
        seen.add(identifier or "")
    return found["RegistryPackage"], found["ExtrinsicObject"], found["Association"]


def read_submission_set(packages: list[Element], request: Element, problems: Problems) -> SubmissionSet | None:
    top = request.findall(f"{q(RIM, 'RegistryObjectList')}/{q(RIM, 'Classification')}")
    sets = []
    for package in packages:
        nodes = [
            c
            for c in [*package.findall(q(RIM, "Classification")), *top]
            if c.get("classifiedObject") == package.get("id")
        ]
        if any(c.get("classificationNode") == SUBMISSION_SET_NODE for c in nodes):
            sets.append(package)
        else:
            problems.add(METADATA, "seul le lot de soumission est accepté (pas de classeur)", package.get("id", ""))
    if len(sets) != 1:
        problems.add(METADATA, f"un et un seul lot de soumission attendu, {len(sets)} trouvé(s)")
        return None
    submission_set = SubmissionSet(sets[0].get("id", ""), sets[0])
    _read_object(submission_set, problems, authors=SS_AUTHOR, coded={SS_CONTENT_TYPE})
    return submission_set


def read_entry(element: Element, problems: Problems) -> DocumentEntry:
    entry = DocumentEntry(element.get("id", ""), element, mime_type=element.get("mimeType", ""))
    entry.object_type = element.get("objectType", "")
    _read_object(entry, problems, authors=DE_AUTHOR, coded=set(CODED_SCHEMES))
    return entry


def read_association(element: Element, problems: Problems) -> Association:
    try:
        found = slots(element)
    except ValueError as exc:
        problems.add(METADATA, str(exc), element.get("id", ""))
        found = {}
    get = element.get
    return Association(get("id", ""), get("associationType", ""), get("sourceObject", ""), get("targetObject", ""),
                       found, element)  # fmt: skip


def attach_documents(
    request: Element, entries: list[DocumentEntry], parts: dict[str, Part], problems: Problems
) -> None:
    """Give each entry its bytes from the `xdsb:Document` that names it and the MTOM part it includes."""
    by_id = {entry.id: entry for entry in entries}
    used: set[str] = set()
    for document in request.findall(q(XDSB, "Document")):
        entry_id = document.get("id", "")
        includes = document.findall(q(XOP, "Include"))
        if entry_id not in by_id:
            problems.add("XDSMissingDocumentMetadata", "xdsb:Document sans ExtrinsicObject correspondant", entry_id)
            continue
        if len(includes) != 1 or text(document) or len(document) != 1:
            problems.add("XDSMissingDocument", "le document doit être une pièce MTOM (xop:Include seul)", entry_id)
            continue
        try:
            part = parts.get(include_target(includes[0].get("href", "")))
        except ValueError as exc:
            part = None
            problems.add("XDSMissingDocument", str(exc), entry_id)
        if part is None:
            problems.add("XDSMissingDocument", "xop:Include vers une pièce MTOM absente", entry_id)
            continue
        if by_id[entry_id].document is not None:
            problems.add("XDSMissingDocumentMetadata", "plusieurs xdsb:Document pour la même fiche", entry_id)
        by_id[entry_id].document = part.data
        used.add(part.content_id)
    for entry in entries:
        if entry.document is None and not any(i.location == entry.id for i in problems.issues):
            problems.add("XDSMissingDocument", "fiche sans document", entry.id)
    for content_id in parts.keys() - used:
        problems.add("XDSMissingDocumentMetadata", f"pièce MTOM <{content_id}> référencée par aucun document")


def _read_object(target: RegistryObject, problems: Problems, *, authors: str, coded: set[str]) -> None:
    element, location = target.element, target.id
    try:
        target.slots = slots(element)
    except ValueError as exc:
        problems.add(METADATA, str(exc), location)
    for classification in element.findall(q(RIM, "Classification")):
        if classification.get("classifiedObject") != target.id:
            problems.add(METADATA, "Classification rattachée à un autre objet", location)
            continue
        scheme = classification.get("classificationScheme", "")
        if scheme == authors:
            target.authors.append(_slots_or_problem(classification, problems, location))
        elif scheme in coded:
            code = _code(classification, problems, location)
            if code is not None:
                target.codes.setdefault(scheme, []).append(code)
        elif classification.get("classificationNode") != SUBMISSION_SET_NODE:
            problems.add(METADATA, f"schéma de classification inconnu {scheme or '(absent)'}", location)
    for identifier in element.findall(q(RIM, "ExternalIdentifier")):
        scheme = identifier.get("identificationScheme", "")
        if identifier.get("registryObject") != target.id or scheme in target.identifiers:
            problems.add(METADATA, f"ExternalIdentifier {scheme} répété ou rattaché à un autre objet", location)
            continue
        target.identifiers[scheme] = identifier.get("value", "").strip()


def _code(classification: Element, problems: Problems, location: str) -> Code | None:
    found = _slots_or_problem(classification, problems, location)
    scheme = found.get("codingScheme", [])
    code = Code(
        classification.get("nodeRepresentation", ""), scheme[0] if len(scheme) == 1 else "", localized(classification)
    )
    if not code.code or not code.scheme or not code.name:
        problems.add(METADATA, f"code {code.code!r} sans nodeRepresentation, codingScheme unique ou nom", location)
        return None
    return code


def _slots_or_problem(element: Element, problems: Problems, location: str) -> dict[str, list[str]]:
    try:
        return slots(element)
    except ValueError as exc:
        problems.add(METADATA, str(exc), location)
        return {}
