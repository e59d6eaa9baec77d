"""Report messages a RIS would send, made up for the demo and the benchmark: MDM^T02 (CI-SIS profile
2.1) carrying a CDA R2 level-1 imaging report that names one study, with a test INS."""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime
from xml.sax.saxutils import escape, quoteattr

INS_TEST_OID = "1.2.250.1.213.1.4.10"
IPP_OID = "1.2.250.1.213.4.5.2.4"
ACCESSION_OID = "1.2.250.1.213.4.5.2.5"


@dataclass(frozen=True)
class DemoReport:
    """What the made-up report says; `ins` is derived from the IPP when not given (test INS)."""

    study_uid: str
    accession: str
    ipp: str
    family: str = "DEMO"
    given: str = "PATIENT"
    sex: str = "F"
    birth_date: str = "19700101"
    author_rpps: str = "801234560801"
    structure_id: str = "000000000"
    ins: str = ""

    @property
    def patient_ins(self) -> str:
        if self.ins:
            return self.ins
        digits = int(hashlib.sha256(self.ipp.encode()).hexdigest(), 16) % 10**13
        return f"2{digits:013d}"[:13] + "00"


def cda(report: DemoReport, document_uid: str) -> bytes:
    """A CDA R2 level 1 imaging report (LOINC 18748-4) naming `report.study_uid`."""
    now = datetime.now(UTC).strftime("%Y%m%d%H%M%S+0000")
    pdf = base64.b64encode(b"%PDF-1.4\n% drimbox demo report\n").decode()
    a = quoteattr
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<ClinicalDocument xmlns="urn:hl7-org:v3" xmlns:ps3-20="urn:dicom-org:ps3-20">
  <realmCode code="FR"/>
  <typeId root="2.16.840.1.113883.1.3" extension="POCD_HD000040"/>
  <templateId root="2.16.840.1.113883.2.8.2.1"/>
  <templateId root="1.2.250.1.213.1.1.1.1"/>
  <templateId root="1.3.6.1.4.1.19376.1.2.20"/>
  <id root={a(document_uid)}/>
  <code code="18748-4" displayName="CR d'imagerie médicale" codeSystem="2.16.840.1.113883.6.1"/>
  <title>Compte rendu d'imagerie (démo)</title>
  <effectiveTime value="{now}"/>
  <confidentialityCode code="N" displayName="Normal" codeSystem="2.16.840.1.113883.5.25"/>
  <languageCode code="fr-FR"/>
  <recordTarget><patientRole>
    <id root="{INS_TEST_OID}" extension={a(report.patient_ins)}/>
    <id root="{IPP_OID}" extension={a(report.ipp)}/>
    <patient>
      <name><family qualifier="BR">{escape(report.family)}</family><given>{escape(report.given)}</given></name>
      <administrativeGenderCode code={a(report.sex)} codeSystem="2.16.840.1.113883.5.1"/>
      <birthTime value={a(report.birth_date)}/>
    </patient>
  </patientRole></recordTarget>
  <author><time value="{now}"/><assignedAuthor>
    <id root="1.2.250.1.71.4.2.1" extension={a(report.author_rpps)}/>
    <code code="G15_10/SM44" displayName="Médecin - Radio-diagnostic (SM)" codeSystem="1.2.250.1.213.1.1.4.5"/>
    <assignedPerson><name><prefix>DR</prefix><given>Jacques</given><family>DEMO</family></name></assignedPerson>
    <representedOrganization><id root="1.2.250.1.71.4.2.2" extension={a(report.structure_id)}/>
      <name>Démo DRIMbox</name></representedOrganization>
  </assignedAuthor></author>
  <custodian><assignedCustodian><representedCustodianOrganization>
    <id root="1.2.250.1.71.4.2.2" extension={a(report.structure_id)}/>
  </representedCustodianOrganization></assignedCustodian></custodian>
  <legalAuthenticator><time value="{now}"/><signatureCode code="S"/><assignedEntity>
    <id root="1.2.250.1.71.4.2.1" extension={a(report.author_rpps)}/>
    <assignedPerson><name><given>Jacques</given><family>DEMO</family></name></assignedPerson>
  </assignedEntity></legalAuthenticator>
  <inFulfillmentOf><order>
    <id root="1.2.250.1.213.4.5.2.6" extension={a("ORD-" + report.accession)}/>
    <ps3-20:accessionNumber root="{ACCESSION_OID}" extension={a(report.accession)}/>
  </order></inFulfillmentOf>
  <documentationOf><serviceEvent classCode="ACT">
    <id root={a(report.study_uid)}/>
    <code code="24604-1" displayName="MG Breast Diagnostic" codeSystem="2.16.840.1.113883.6.1"/>
    <effectiveTime><low value="{now}"/><high value="{now}"/></effectiveTime>
  </serviceEvent></documentationOf>
  <componentOf><encompassingEncounter><effectiveTime value="{now}"/><location><healthCareFacility>
    <code code="SA07" displayName="Cabinet individuel" codeSystem="1.2.250.1.71.4.2.4"/>
  </healthCareFacility></location></encompassingEncounter></componentOf>
  <component><nonXMLBody><text mediaType="application/pdf" representation="B64">{pdf}</text></nonXMLBody></component>
</ClinicalDocument>
""".encode()


def mdm_t02(report: DemoReport, control_id: str, document_uid: str) -> bytes:
    """The MDM^T02 message (v2.6, CR segments) carrying the report, as a RIS sends it."""
    now = datetime.now(UTC).strftime("%Y%m%d%H%M%S")
    body = base64.b64encode(cda(report, document_uid)).decode()
    ins = f"{report.patient_ins}^^^ASIP-SANTE-INS-NIR&{INS_TEST_OID}&ISO^INS"
    ipp = f"{report.ipp}^^^DEMO&{IPP_OID}&ISO^PI"
    segments = [
        f"MSH|^~\\&|DEMO_RIS|DEMO|DRIMBOX|DEMO|{now}||MDM^T02^MDM_T02|{control_id}|P|2.6|||||FRA|UNICODE UTF-8|||"
        "2.1^CISIS_CDA_HL7_V2",
        f"EVN||{now}",
        f"PID|||{ins}~{ipp}||{report.family}^{report.given}^^^^^L||{report.birth_date}|{report.sex}"
        + "|" * 24
        + "VALI",
        "PV1|1|O",
        f"TXA|1|18748-4|TEXT|{now}||||||||{document_uid}|||||AU",
        f"OBX|1|ED|18748-4^CR d'imagerie médicale^LN||^TEXT^XML^Base64^{body}||||||F",
        "OBX|2|CE|DESTDMP^Destinataire DMP^MetaDMPMSS||Y^^expandedYes-NoIndicator||||||F",
        "OBX|3|CE|MASQUE_PS^Masqué aux professionnels de santé^MetaDMPMSS||N^^expandedYes-NoIndicator||||||F",
        "OBX|4|CE|INVISIBLE_PATIENT^Non visible par le patient^MetaDMPMSS||N^^expandedYes-NoIndicator||||||F",
    ]
    return ("\r".join(segments) + "\r").encode("utf-8")
