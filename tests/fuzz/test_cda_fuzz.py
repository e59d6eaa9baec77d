"""CDA R2 reports from a RIS: whatever the document, `read_report` gives a Report or ReportRefused.

Seeds are the DRIM-M sample report and the CDA carried by each CI-SIS message, without their
base64 PDF bodies. Edits work on the tree (elements removed, repeated, moved, renamed; identifiers
and codes replaced) and on the bytes (declarations, entities, DOCTYPEs, broken UTF-8).
"""

from __future__ import annotations

import re
from pathlib import Path

from hypothesis import event, given
from hypothesis import strategies as st
from lxml import etree

from drimbox.errors import ReportRefused
from drimbox.hl7 import read_message
from drimbox.report.cda import read_report
from drimbox.uids import is_valid_uid
from tests.fuzz.damage import budget, damaged

FIXTURES = Path(__file__).parents[1] / "fixtures"


def _without_bodies(document: bytes) -> bytes:
    return re.sub(rb'(representation="B64"\s*>)[^<]*', rb"\1JVBERi0=", document)


SEEDS = [
    _without_bodies(document)
    for document in (
        (FIXTURES / "drim-m" / "cda-imaging-report-example.xml").read_bytes(),
        *(read_message(path.read_bytes()).document for path in sorted((FIXTURES / "hl7v2-cisis").glob("mdm-*.er7"))),
        read_message((FIXTURES / "hl7v2-cisis" / "oru-r01-report-initial.hl7").read_bytes()).document,
        read_message((FIXTURES / "drim-m" / "hl7v2-oru-report-example.hl7").read_bytes()).document,
    )
]
ATTRIBUTES = ("root", "extension", "code", "codeSystem", "displayName", "value", "qualifier", "typeCode", "nullFlavor")
VALUES = st.one_of(
    st.sampled_from(["", " ", "1.2.250.1.213.1.4.8", "1.2.250.1.213.1.4.10", "1.2.3", "01.2", "1..2", "1.2." * 30,
                     "Ã©", "Ã", "Ã©" * 500, "\u00e9", "\x7f", "\ufffd", "x" * 70_000, "BR CL", "CL", "-1", "NaN"]),
    st.text(st.characters(codec="utf-8", exclude_categories=["Cs", "Cc"]), max_size=30),
)  # fmt: skip
TAGS = ("id", "code", "patientRole", "patient", "name", "family", "given", "assignedAuthor", "serviceEvent",
        "documentationOf", "effectiveTime", "confidentialityCode", "order", "accessionNumber", "translation",
        "relatedDocument", "parentDocument", "low", "high", "standardIndustryClassCode",
        "ClinicalDocument")  # fmt: skip
NAMESPACES = ("urn:hl7-org:v3", "", "urn:dicom-org:ps3-20", "urn:other")
TOKENS = (b"<", b">", b"&", b'"', b"/>", b"]]>", b"<![CDATA[", b"&#0;", b"&#x1F;", b"&amp;", b"&lt;", b"\xc3(",
          b"\xff\xfe", b"<!DOCTYPE x>", b"<!ENTITY e SYSTEM 'file:///etc/passwd'>", b"&e;", b"<?pi x?>",
          b"<!-- -->", b'xmlns="urn:other"', b'xmlns:x="urn:hl7-org:v3"')  # fmt: skip
DECLARATIONS = (b"", b'<?xml version="1.0"?>', b'<?xml version="1.0" encoding="UTF-16"?>',
                b'<?xml version="1.0" encoding="ISO-8859-1"?>', b'<?xml version="1.0" encoding="x-unknown"?>',
                b'<?xml version="1.1" encoding="UTF-8"?>', b'<?xml version="1.0" encoding="EBCDIC-US"?>',
                b"\xef\xbb\xbf", b"\xff\xfe", b"  \n")  # fmt: skip
DOCTYPES = (
    b"",
    b'<!DOCTYPE ClinicalDocument [<!ENTITY x "y">]>',
    b'<!DOCTYPE ClinicalDocument SYSTEM "http://127.0.0.1:9/cda.dtd">',
    b'<!DOCTYPE ClinicalDocument [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>',
    b'<!DOCTYPE ClinicalDocument [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">'
    b'<!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;"><!ENTITY d "&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;">]>',
)


@st.composite
def edited(draw: st.DrawFn, seed: bytes) -> bytes:
    """`seed` with 1-4 tree edits, then a declaration, a DOCTYPE and byte damage, each sometimes."""
    root = etree.fromstring(seed, etree.XMLParser(resolve_entities=False, no_network=True))
    for _ in range(draw(st.integers(1, 4))):
        elements = [e for e in root.iter() if isinstance(e.tag, str)]
        element = elements[draw(st.integers(0, len(elements) - 1))]
        parent = element.getparent()
        edit = draw(st.sampled_from(("remove", "repeat", "move", "rename", "attribute", "attribute", "text")))
        if edit == "remove" and parent is not None:
            parent.remove(element)
        elif edit == "repeat" and parent is not None:
            parent.insert(parent.index(element), etree.fromstring(etree.tostring(element)))
        elif edit == "move" and parent is not None:
            target = elements[draw(st.integers(0, len(elements) - 1))]
            if element not in target.iterancestors() and target is not element:
                target.append(element)
        elif edit == "rename":
            element.tag = f"{{{draw(st.sampled_from(NAMESPACES))}}}{draw(st.sampled_from(TAGS))}".replace("{}", "")
        elif edit == "attribute":
            element.set(draw(st.sampled_from(ATTRIBUTES)), draw(VALUES))
        else:
            element.text = draw(VALUES)
    body = etree.tostring(root, encoding="utf-8", xml_declaration=False)
    # the tree edits are what reach the reader's checks: other damage only one time in four
    declaration = draw(st.sampled_from(DECLARATIONS)) if draw(st.integers(0, 3)) == 0 else DECLARATIONS[1]
    doctype = draw(st.sampled_from(DOCTYPES)) if draw(st.integers(0, 3)) == 0 else b""
    document = declaration + doctype + body
    if draw(st.integers(0, 3)) == 0:
        document = draw(damaged(document, hot=4000, tokens=TOKENS, max_edits=3))
    return document


def _read(document: bytes) -> None:
    try:
        report = read_report(document)
    except ReportRefused as refused:
        assert str(refused) and isinstance(refused.location, str)
        event(f"refused: {str(refused)[:40]}")
    else:
        event("read")
        assert report.patient.ins.extension and report.author.id.root and report.studies
        assert all(is_valid_uid(study.study_uid) for study in report.studies)
        assert b"root:" not in str(report).encode()  # no external entity (/etc/passwd) was ever expanded


@budget(300)
@given(st.binary(max_size=3000) | st.sampled_from(DECLARATIONS + DOCTYPES).map(lambda head: head + b"<a/>"))
def test_random_bytes_are_refused(document: bytes) -> None:
    _read(document)


@budget(500)
@given(st.sampled_from(SEEDS).flatmap(edited))
def test_edited_reports_are_read_or_refused(document: bytes) -> None:
    _read(document)


@budget(300)
@given(st.sampled_from(SEEDS).flatmap(lambda seed: damaged(seed, hot=6000, tokens=TOKENS)))
def test_damaged_reports_are_read_or_refused(document: bytes) -> None:
    _read(document)
