"""What a CDA imaging report tells the publication: identity, authors, order, studies, codes.

Values are kept as the report writes them (HL7 TS strings, OIDs, codes with their systems), so
the XDS metadata and the KOS can quote them without re-formatting guesses.
"""

from __future__ import annotations

from dataclasses import dataclass

#: INS OIDs (DRIM-M §4.13): production NIR and NIA; test NIR and test NIA.
INS_NIR = "1.2.250.1.213.1.4.8"
INS_NIA = "1.2.250.1.213.1.4.9"
INS_NIR_TEST = "1.2.250.1.213.1.4.10"
INS_NIA_TEST = "1.2.250.1.213.1.4.11"
PRODUCTION_INS_ROOTS = (INS_NIR, INS_NIA)
TEST_INS_ROOTS = (INS_NIR_TEST, INS_NIA_TEST)

#: LOINC "CR d'imagerie médicale", the only document type a DRIMbox publishes a KOS for by default.
IMAGING_REPORT_LOINC = "18748-4"


@dataclass(frozen=True)
class Identifier:
    """An HL7 instance identifier: `root` is the issuing OID, `extension` the value under it.

    A root-only identifier (a StudyInstanceUID, a document id) has an empty extension.
    """

    root: str
    extension: str = ""


@dataclass(frozen=True)
class Code:
    """A coded value with its code system OID and display name."""

    code: str
    system: str
    display: str = ""


@dataclass(frozen=True)
class Professional:
    """A health professional as the CDA names one (author, legal authenticator).

    `id` is the RPPS/ADELI identifier (root 1.2.250.1.71.4.2.1); `role` the profession/specialty
    code (e.g. G15_10/SM44 in 1.2.250.1.213.1.1.4.5); `organisation` the structure id (root
    1.2.250.1.71.4.2.2).
    """

    id: Identifier
    family: str = ""
    given: str = ""
    prefix: str = ""
    role: Code | None = None
    organisation: Identifier | None = None
    organisation_name: str = ""


@dataclass(frozen=True)
class Patient:
    """The patient's INS identity (strict traits) and the site's IPP.

    `ins.root` is one of the INS OIDs; `ipp.root` the OID of the facility that assigned the IPP.
    `birth_family` is the family name qualified BR, `used_family`/`used_given` the CL ones.
    """

    ins: Identifier
    ipp: Identifier | None
    birth_family: str
    given: str
    used_family: str = ""
    used_given: str = ""
    sex: str = ""
    birth_date: str = ""
    birthplace_code: str = ""


@dataclass(frozen=True)
class ReportedStudy:
    """One `documentationOf/serviceEvent`: the study the report is about.

    `translations` keeps the codes under serviceEvent/code (CCAM act, DICOM modality, SNOMED CT
    region); `start`/`stop` are HL7 TS values of effectiveTime low/high.
    """

    study_uid: str
    code: Code | None = None
    translations: tuple[Code, ...] = ()
    start: str = ""
    stop: str = ""


@dataclass(frozen=True)
class Report:
    """Everything publication takes from one CDA R2 imaging report.

    `warnings` lists oddities that did not stop reading (e.g. double-encoded UTF-8): they are
    shown with the publication, never silently dropped.
    """

    document_id: Identifier
    code: Code
    title: str
    effective_time: str
    confidentiality: Code
    language: str
    patient: Patient
    author: Professional
    legal_authenticator: Professional | None
    order: Identifier | None
    accession: Identifier | None
    studies: tuple[ReportedStudy, ...]
    replaces: Identifier | None = None
    facility_type: Code | None = None
    practice_setting: Code | None = None
    warnings: tuple[str, ...] = ()
