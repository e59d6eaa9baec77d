"""The fixed vocabulary of XDS.b at the DMP: scheme UUIDs, code systems and the DRIM-M codes (§4.4, §4.13).

Kept apart from the builders so the metadata code reads as the DRIM-M tables do, and tests can
quote the same names.
"""

from __future__ import annotations

from drimbox.report.model import Code

# ebRIM classification and identification schemes (IHE ITI TF-3 §4.2.5).
SUBMISSION_SET_NODE = "urn:uuid:a54d6aa5-d40d-43f9-88c5-b4633d873bdd"
SUBMISSION_SET_AUTHOR = "urn:uuid:a7058bb9-b4e4-4307-ba5b-e3f0ab85e12d"
SUBMISSION_SET_CONTENT_TYPE = "urn:uuid:aa543740-bdda-424e-8c96-df4873be8500"
SUBMISSION_SET_PATIENT_ID = "urn:uuid:6b5aea1a-874d-4603-a4bc-96a0a7b38446"
SUBMISSION_SET_SOURCE_ID = "urn:uuid:554ac39e-e3fe-47fe-b233-965d2a147832"
SUBMISSION_SET_UNIQUE_ID = "urn:uuid:96fdda7c-d067-4183-912e-bf5ee74998a8"

STABLE_DOCUMENT_ENTRY = "urn:uuid:7edca82f-054d-47f2-a032-9b2a5b5186c1"
ENTRY_AUTHOR = "urn:uuid:93606bcf-9494-43ec-9b4e-a7748d1a838d"
ENTRY_CLASS = "urn:uuid:41a5887f-8865-4c09-adf7-e362475b143a"
ENTRY_TYPE = "urn:uuid:f0306f51-975f-434e-a61c-c59651d33983"
ENTRY_CONFIDENTIALITY = "urn:uuid:f4f85eac-e6cb-4883-b524-f2705394840f"
ENTRY_FORMAT = "urn:uuid:a09d5840-386c-46f2-b5ad-9c3699a4309d"
ENTRY_FACILITY_TYPE = "urn:uuid:f33fb8ac-18af-42cc-ae0e-ed0b0bdb91e1"
ENTRY_PRACTICE_SETTING = "urn:uuid:cccf5598-8b07-4b77-a05e-ae952c785ead"
ENTRY_EVENT = "urn:uuid:2c6b8cb7-8b2a-4051-b291-b1ae6a575ef4"
ENTRY_PATIENT_ID = "urn:uuid:58a6f841-87b3-4a3e-92fd-a8ffeff98427"
ENTRY_UNIQUE_ID = "urn:uuid:2e82c1f6-a085-4c72-9da3-8640a32e42ab"

HAS_MEMBER = "urn:oasis:names:tc:ebxml-regrep:AssociationType:HasMember"
SIGNS = "urn:ihe:iti:2007:AssociationType:signs"
REPLACES = "urn:ihe:iti:2007:AssociationType:RPLC"
UPDATE_AVAILABILITY_STATUS = "urn:ihe:iti:2010:AssociationType:UpdateAvailabilityStatus"
STATUS_APPROVED = "urn:oasis:names:tc:ebxml-regrep:StatusType:Approved"
#: The DMP's own status for a withdrawn document (DRIM-M §4.8), not ebRIM's Deprecated.
STATUS_DELETED = "urn:asip:ci-sis:2010:StatusType:Deleted"

#: ITI-18 GetDocuments.
GET_DOCUMENTS_QUERY = "urn:uuid:5c4f972b-d56b-40ac-a5fc-c8ca9b40b9d4"

# Identifier roots (DRIM-M §4.13).
RPPS_ROOT = "1.2.250.1.71.4.2.1"
STRUCTURE_ROOT = "1.2.250.1.71.4.2.2"
FACILITY_TYPE_SYSTEM = "1.2.250.1.71.4.2.4"
PRACTICE_SETTING_SYSTEM = "1.2.250.1.213.1.1.4.9"
#: Default assigning authority of the StudyInstanceUID reference id when `dmp.uid_root` is empty.
DEFAULT_STUDY_AUTHORITY = "1.2.250.1.213"
SNOMED_CT = "2.16.840.1.113883.6.96"

KOS_CLASS = Code("31", "1.2.250.1.213.1.1.4.1", "Imagerie médicale")
KOS_TYPE = Code("IMG-KOS", "1.2.250.1.213.1.1.4.12", "Reference d'objets d'un examen d'imagerie")
KOS_FORMAT = Code(
    "1.2.840.10008.5.1.4.1.1.88.59",
    "1.2.840.10008.2.6.1",
    "Document de Références d'objets d'imagerie selon profil IHE RAD XDS-I",
)
KOS_NAME = "Reference d'Objets d'un Examen d'Imagerie"
NORMAL = Code("N", "2.16.840.1.113883.5.25", "Normal")

REPORT_CLASS = Code("10", "1.2.250.1.213.1.1.4.1", "Compte rendu")
REPORT_TYPE = Code("18748-4", "2.16.840.1.113883.6.1", "CR d'imagerie médicale")
REPORT_FORMAT = Code(
    "urn:ihe:iti:xds-sd:pdf:2008", "1.3.6.1.4.1.19376.1.2.3", "Document à corps non structuré en Pdf/A-1"
)

SIGNATURE_CLASS = Code("urn:oid:1.3.6.1.4.1.19376.1.2.1.1.1", "URN", "Digital Signature")
SIGNATURE_TYPE = Code("E1762", "ASTM", "Full Document")
SIGNATURE_FORMAT = Code("http://www.w3.org/2000/09/xmldsig#", "URN", "Default Signature Style")
#: Purpose of signature "Source" (ASTM E1762): also the XAdES SignatureProperty and the event code.
SIGNATURE_PURPOSE = Code("1.2.840.10065.1.12.1.14", "1.2.840.10065.1.12", "Source")

VISIBILITY_SYSTEM = "1.2.250.1.213.1.1.4.13"
MASKED_FROM_PROFESSIONALS = Code("MASQUE_PS", VISIBILITY_SYSTEM, "Masqué aux professionnels de santé")
INVISIBLE_TO_PATIENT = Code("INVISIBLE_PATIENT", VISIBILITY_SYSTEM, "Non visible par le patient")
INVISIBLE_TO_GUARDIANS = Code(
    "INVISIBLE_REPRESENTANTS_LEGAUX", VISIBILITY_SYSTEM, "Non visible par les représentants légaux du patient"
)
#: HL7 MetaDMPMSS flag (CI-SIS) → confidentiality code of the document entries (TRE_A07).
VISIBILITY_FLAGS = {
    "MASQUE_PS": MASKED_FROM_PROFESSIONALS,
    "INVISIBLE_PATIENT": INVISIBLE_TO_PATIENT,
    "INVISIBLE_REP_LEGAUX": INVISIBLE_TO_GUARDIANS,
}
#: The signature entry is hidden from everyone but its registry (DRIM-M §4.4 "Signature DocumentEntry").
SIGNATURE_CONFIDENTIALITY = (NORMAL, MASKED_FROM_PROFESSIONALS, INVISIBLE_TO_PATIENT)

MODALITY_SYSTEM = "1.2.250.1.213.1.1.5.618"
REGION_SYSTEM = "1.2.250.1.213.1.1.5.695"
#: DICOM CID 29 meanings for the modalities a DRIMbox meets; others are written with their code.
MODALITY_NAMES = {
    "CR": "Computed Radiography",
    "CT": "Computed Tomography",
    "DX": "Digital Radiography",
    "MG": "Mammography",
    "MR": "Magnetic Resonance",
    "NM": "Nuclear Medicine",
    "OT": "Other",
    "PT": "Positron emission tomography",
    "RF": "Radio Fluoroscopy",
    "US": "Ultrasound",
    "XA": "X-Ray Angiography",
}

#: Display names of the setting-given codes when the report does not carry one.
FACILITY_TYPE_NAMES = {
    "SA01": "Etablissement public de santé",
    "SA07": "Cabinet individuel",
    "SA08": "Cabinet de groupe",
    "SA25": "Laboratoire de biologie médicale",
}
PRACTICE_SETTING_NAMES = {"AMBULATOIRE": "Ambulatoire", "ETABLISSEMENT": "Etablissement de santé"}

# VIHF (DRIM-M §4.6).
PROFESSION_SYSTEM = "1.2.250.1.71.1.2.7"
SPECIALTY_SYSTEM = "1.2.250.1.71.4.2.5"
PROFESSION_NAMES = {"10": "Medecin", "21": "Pharmacien", "40": "Chirurgien-Dentiste", "50": "Sage-Femme"}
PURPOSE_OF_USE_SYSTEM = "1.2.250.1.213.1.1.4.248"
