"""Read a CDA R2 imaging report into a `Report` (DRIM-M §4.2).

Only what publication needs is read, each from the place the CI-SIS samples use. The reader
refuses a document that cannot name the patient (INS), the author or at least one study, and
nothing else: whether the INS root is acceptable here (test vs production OIDs) is a policy the
publication core applies from configuration.

The parser never touches the network and never expands entities; a document with a DOCTYPE is
refused, as no CDA carries one.
"""

from __future__ import annotations

from lxml import etree

from drimbox.errors import ReportRefused
from drimbox.report.encoding import looks_double_encoded, repaired
from drimbox.report.model import (
    INS_NIA,
    INS_NIA_TEST,
    INS_NIR,
    INS_NIR_TEST,
    Code,
    Identifier,
    Patient,
    Professional,
    Report,
    ReportedStudy,
)
from drimbox.uids import is_valid_uid

HL7 = "urn:hl7-org:v3"
NS = {"hl7": HL7}
INS_ROOTS = (INS_NIR, INS_NIA, INS_NIR_TEST, INS_NIA_TEST)

_Element = etree._Element


def _parser() -> etree.XMLParser:
    return etree.XMLParser(
        resolve_entities=False,
        no_network=True,
        huge_tree=False,
        load_dtd=False,
        remove_comments=True,
        remove_pis=True,
    )


def read_report(document: bytes) -> Report:
    """The report `document` (CDA R2 bytes) describes; ReportRefused when it cannot be published."""
    root = _parse(document)
    reader = _Reader()
    header = _header(root, reader)
    patient = _patient(root, reader)
    author = _author(root, reader)
    studies = _studies(root, reader)
    order_el = root.find("hl7:inFulfillmentOf/hl7:order", NS)
    return Report(
        document_id=header[0],
        code=header[1],
        title=reader.text(root.find("hl7:title", NS), "/ClinicalDocument/title"),
        effective_time=header[2],
        confidentiality=header[3],
        language=_attr(root.find("hl7:languageCode", NS), "code"),
        patient=patient,
        author=author,
        legal_authenticator=_legal_authenticator(root, reader),
        order=_identifier(order_el.find("hl7:id", NS)) if order_el is not None else None,
        accession=_accession(order_el),
        studies=studies,
        replaces=_identifier(root.find("hl7:relatedDocument[@typeCode='RPLC']/hl7:parentDocument/hl7:id", NS)),
        facility_type=reader.code(
            root.find("hl7:componentOf/hl7:encompassingEncounter/hl7:location/hl7:healthCareFacility/hl7:code", NS),
            "/ClinicalDocument/componentOf/encompassingEncounter/location/healthCareFacility/code",
        ),
        practice_setting=_practice_setting(root, reader),
        warnings=tuple(reader.warnings),
    )


class _Reader:
    """Reads text and codes, repairing double-encoded UTF-8 and remembering where it did."""

    def __init__(self) -> None:
        self.warnings: list[str] = []

    def clean(self, value: str, where: str) -> str:
        if not looks_double_encoded(value):
            return value
        fixed = repaired(value)
        if fixed is None:
            self.warn(f"text looks double-encoded (UTF-8 read as Latin-1) and was left as is: {where}")
            return value
        self.warn(f"double-encoded UTF-8 repaired: {where}")
        return fixed

    def text(self, element: _Element | None, where: str) -> str:
        if element is None:
            return ""
        return self.clean(" ".join("".join(element.itertext()).split()), where)

    def code(self, element: _Element | None, where: str) -> Code | None:
        code = _attr(element, "code")
        if element is None or not code:
            return None
        display = self.clean(_attr(element, "displayName"), f"{where}/@displayName")
        return Code(code=code, system=_attr(element, "codeSystem"), display=display)

    def warn(self, message: str) -> None:
        if message not in self.warnings:
            self.warnings.append(message)


def _parse(document: bytes) -> _Element:
    if not document.strip():
        raise ReportRefused("the report is empty", "/")
    try:
        tree = etree.fromstring(bytes(document), _parser()).getroottree()
    except (etree.XMLSyntaxError, ValueError) as exc:
        raise ReportRefused(f"the report is not well-formed XML: {exc}", "/") from exc
    if tree.docinfo.doctype:
        raise ReportRefused("the report declares a DOCTYPE, which a CDA never carries", "/")
    root = tree.getroot()
    if not isinstance(root.tag, str) or root.tag != f"{{{HL7}}}ClinicalDocument":
        raise ReportRefused(f"the root element is {root.tag!r}, not an HL7 v3 ClinicalDocument", "/")
    return root


def _header(root: _Element, reader: _Reader) -> tuple[Identifier, Code, str, Code]:
    """Document id, type code, effectiveTime and confidentiality: the XDS entry cannot do without them."""
    document_id = _identifier(root.find("hl7:id", NS))
    if document_id is None:
        raise ReportRefused("no document id (ClinicalDocument/id/@root)", "/ClinicalDocument/id")
    code = reader.code(root.find("hl7:code", NS), "/ClinicalDocument/code")
    if code is None:
        raise ReportRefused("no document type code", "/ClinicalDocument/code")
    effective_time = _attr(root.find("hl7:effectiveTime", NS), "value")
    if not effective_time:
        raise ReportRefused("no document effectiveTime", "/ClinicalDocument/effectiveTime")
    confidentiality = reader.code(root.find("hl7:confidentialityCode", NS), "/ClinicalDocument/confidentialityCode")
    if confidentiality is None:
        raise ReportRefused("no confidentialityCode", "/ClinicalDocument/confidentialityCode")
    return document_id, code, effective_time, confidentiality


def _patient(root: _Element, reader: _Reader) -> Patient:
    where = "/ClinicalDocument/recordTarget/patientRole"
    role = root.find("hl7:recordTarget/hl7:patientRole", NS)
    if role is None:
        raise ReportRefused("no INS in recordTarget/patientRole/id (no patientRole)", where)
    ids = [i for i in (_identifier(e) for e in role.findall("hl7:id", NS)) if i is not None and i.extension]
    ins = next((i for i in ids if i.root in INS_ROOTS), None)
    if ins is None:
        raise ReportRefused("no INS in recordTarget/patientRole/id", f"{where}/id")
    ipp = next((i for i in ids if i.root not in INS_ROOTS), None)
    person = role.find("hl7:patient", NS)
    names = _PatientNames.read(
        person.find("hl7:name", NS) if person is not None else None, reader, f"{where}/patient/name"
    )
    county = person.find("hl7:birthplace/hl7:place/hl7:addr/hl7:county", NS) if person is not None else None
    return Patient(
        ins=ins,
        ipp=ipp,
        birth_family=names.birth_family,
        given=names.given,
        used_family=names.used_family,
        used_given=names.used_given,
        sex=_attr(person.find("hl7:administrativeGenderCode", NS) if person is not None else None, "code"),
        birth_date=_attr(person.find("hl7:birthTime", NS) if person is not None else None, "value"),
        birthplace_code=reader.text(county, f"{where}/patient/birthplace/place/addr/county"),
    )


class _PatientNames:
    """INS name traits from `patient/name`, by HL7 qualifier (CI-SIS).

    `family` BR is the birth name, CL the used one; `given` without qualifier lists the birth
    first names (a `given` BR, when present, is the first of them), `given` CL is the used first
    name. A document without qualifiers falls back on the unqualified parts.
    """

    def __init__(self, parts: list[tuple[str, frozenset[str], str]]) -> None:
        self.birth_family = self._pick(parts, "family", "BR") or self._pick(parts, "family", "")
        self.used_family = self._pick(parts, "family", "CL")
        self.given = self._join(parts, "given", "") or self._join(parts, "given", "BR")
        self.used_given = self._pick(parts, "given", "CL")

    @classmethod
    def read(cls, name: _Element | None, reader: _Reader, where: str) -> _PatientNames:
        parts: list[tuple[str, frozenset[str], str]] = []
        for part in name if name is not None else ():
            kind = etree.QName(part).localname if isinstance(part.tag, str) else ""
            if kind in ("family", "given"):
                qualifiers = frozenset(_attr(part, "qualifier").split())
                parts.append((kind, qualifiers, reader.text(part, f"{where}/{kind}")))
        return cls(parts)

    @staticmethod
    def _matching(parts: list[tuple[str, frozenset[str], str]], kind: str, qualifier: str) -> list[str]:
        return [text for k, q, text in parts if k == kind and text and ((qualifier in q) if qualifier else not q)]

    @classmethod
    def _pick(cls, parts: list[tuple[str, frozenset[str], str]], kind: str, qualifier: str) -> str:
        found = cls._matching(parts, kind, qualifier)
        return found[0] if found else ""

    @classmethod
    def _join(cls, parts: list[tuple[str, frozenset[str], str]], kind: str, qualifier: str) -> str:
        return " ".join(cls._matching(parts, kind, qualifier))


def _professional(assigned: _Element | None, reader: _Reader, where: str) -> Professional | None:
    """An assignedAuthor/assignedEntity, or None when it has no usable id."""
    if assigned is None:
        return None
    ident = next((i for i in map(_identifier, assigned.findall("hl7:id", NS)) if i is not None), None)
    if ident is None:
        return None
    name = assigned.find("hl7:assignedPerson/hl7:name", NS)
    organisation = assigned.find("hl7:representedOrganization", NS)
    givens = name.findall("hl7:given", NS) if name is not None else []
    return Professional(
        id=ident,
        family=reader.text(name.find("hl7:family", NS) if name is not None else None, f"{where}/assignedPerson"),
        given=" ".join(t for t in (reader.text(g, f"{where}/assignedPerson") for g in givens) if t),
        prefix=reader.text(name.find("hl7:prefix", NS) if name is not None else None, f"{where}/assignedPerson"),
        role=reader.code(assigned.find("hl7:code", NS), f"{where}/code"),
        organisation=_identifier(organisation.find("hl7:id", NS)) if organisation is not None else None,
        organisation_name=reader.text(
            organisation.find("hl7:name", NS) if organisation is not None else None,
            f"{where}/representedOrganization/name",
        ),
    )


def _author(root: _Element, reader: _Reader) -> Professional:
    where = "/ClinicalDocument/author/assignedAuthor"
    author = _professional(root.find("hl7:author/hl7:assignedAuthor", NS), reader, where)
    if author is None:
        raise ReportRefused("no author id (author/assignedAuthor/id)", f"{where}/id")
    return author


def _legal_authenticator(root: _Element, reader: _Reader) -> Professional | None:
    where = "/ClinicalDocument/legalAuthenticator/assignedEntity"
    return _professional(root.find("hl7:legalAuthenticator/hl7:assignedEntity", NS), reader, where)


def _studies(root: _Element, reader: _Reader) -> tuple[ReportedStudy, ...]:
    """Each serviceEvent whose id root is a StudyInstanceUID; others (screening context) are skipped."""
    studies: dict[str, ReportedStudy] = {}
    for index, event in enumerate(root.findall("hl7:documentationOf/hl7:serviceEvent", NS), start=1):
        where = f"/ClinicalDocument/documentationOf[{index}]/serviceEvent"
        uid = next((i.root for i in map(_identifier, event.findall("hl7:id", NS)) if i and is_valid_uid(i.root)), "")
        if not uid:
            continue
        if uid in studies:
            reader.warn(f"study {uid} is named twice; the first serviceEvent is kept: {where}")
            continue
        code_el = event.find("hl7:code", NS)
        translations = () if code_el is None else code_el.findall("hl7:translation", NS)
        studies[uid] = ReportedStudy(
            study_uid=uid,
            code=reader.code(code_el, f"{where}/code"),
            translations=tuple(
                c for c in (reader.code(t, f"{where}/code/translation") for t in translations) if c is not None
            ),
            start=_attr(event.find("hl7:effectiveTime/hl7:low", NS), "value"),
            stop=_attr(event.find("hl7:effectiveTime/hl7:high", NS), "value"),
        )
    if not studies:
        raise ReportRefused(
            "no documentationOf/serviceEvent carries a StudyInstanceUID (serviceEvent/id/@root)",
            "/ClinicalDocument/documentationOf/serviceEvent/id",
        )
    return tuple(studies.values())


def _practice_setting(root: _Element, reader: _Reader) -> Code | None:
    """The performer's structure sector (AMBULATOIRE/ETABLISSEMENT), else the author's."""
    performer = "hl7:documentationOf/hl7:serviceEvent/hl7:performer/hl7:assignedEntity/hl7:representedOrganization"
    author = "hl7:author/hl7:assignedAuthor/hl7:representedOrganization"
    for path in (performer, author):
        for element in root.findall(f"{path}/hl7:standardIndustryClassCode", NS):
            code = reader.code(element, f"/ClinicalDocument/{path.replace('hl7:', '')}/standardIndustryClassCode")
            if code is not None:
                return code
    return None


def _accession(order: _Element | None) -> Identifier | None:
    """`order/ps3-20:accessionNumber`, matched by local name: the DICOM namespace URI varies between RIS."""
    for child in order if order is not None else ():
        if isinstance(child.tag, str) and etree.QName(child).localname == "accessionNumber":
            ident = _identifier(child)
            if ident is not None and ident.extension:
                return ident
    return None


def _identifier(element: _Element | None) -> Identifier | None:
    """An II with a root; a nullFlavor id (no root) is no identifier."""
    root = _attr(element, "root")
    if not root:
        return None
    return Identifier(root=root, extension=_attr(element, "extension"))


def _attr(element: _Element | None, name: str) -> str:
    if element is None:
        return ""
    return (element.get(name) or "").strip()
