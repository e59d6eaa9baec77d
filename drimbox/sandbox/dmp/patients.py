"""TD0.2 (test d'existence et d'autorisation, HL7v3 PRPA_IN201307UV02 → PRPA_IN201308UV02) and
TD0.3 (setAuthorization AJOUT), kept simple but well-formed (DRIM-M §4.8).

TD0.2 wants `controlActProcess/reasonCode` TEST_EXST (1.2.250.1.213.1.1.4.11) and the INS in
`queryByParameter/parameterList/patientIdentifier/value` (root = an accepted INS OID, extension =
the INS), the same patient as the VIHF's resource-id. The answer carries
`queryAck/queryResponseCode` OK and, on the patient, an `administrativeObservation` coded
AUTORISATION whose value is VALIDE or INTERDIT (the PoC reads the `code="…"` after "AUTORISATION");
an unknown patient gets queryResponseCode NF and no subject ("patient inconnu"). TD0.3 records an
authorisation of the VIHF's professional (NameID) for the VIHF's patient, after which TD0.2 answers
VALIDE for that professional.
"""

from __future__ import annotations

import copy
import uuid

from lxml import etree

from drimbox.sandbox.dmp.answers import Fault, hl7_element, hl7_now
from drimbox.sandbox.dmp.context import Context
from drimbox.sandbox.dmp.ebxml import HABILITATIONS, HL7, XSI, Element, q, text
from drimbox.sandbox.dmp.rules import patient_ins

DMP_DEVICE = "1.2.250.1.213.4.1.1.1"
REASON_SYSTEM = "1.2.250.1.213.1.1.4.11"
SANDBOX_ROOT = "1.2.250.1.999.9.2"  # ids of the sandbox's messages


def existence(context: Context) -> Element:
    request = context.envelope.body
    if request.tag != q(HL7, "PRPA_IN201307UV02"):
        raise _bad("hl7:PRPA_IN201307UV02 attendu")
    interaction = request.find(q(HL7, "interactionId"))
    if interaction is None or interaction.get("extension") != "PRPA_IN201307UV02":
        raise _bad("interactionId PRPA_IN201307UV02 attendu")
    act = request.find(q(HL7, "controlActProcess"))
    reason = None if act is None else act.find(q(HL7, "reasonCode"))
    if reason is None or (reason.get("code"), reason.get("codeSystem")) != ("TEST_EXST", REASON_SYSTEM):
        raise _bad(f"reasonCode TEST_EXST ({REASON_SYSTEM}) attendu")
    query = act.find(q(HL7, "queryByParameter")) if act is not None else None
    path = f"{q(HL7, 'parameterList')}/{q(HL7, 'patientIdentifier')}/{q(HL7, 'value')}"
    value = None if query is None else query.find(path)
    root, ins = ("", "") if value is None else (value.get("root", ""), value.get("extension", ""))
    patient_id = f"{ins}^^^&{root}&ISO^NH"
    if patient_ins(patient_id, context.rules.ins_oids) != ins or not ins:
        raise _bad("patientIdentifier/value : INS et OID d'INS accepté attendus")
    if patient_id != context.vihf.resource_id:
        raise _bad("le patient demandé n'est pas le resource-id du VIHF", "PATIENT_DIFFERENT")
    known = context.store.patient(ins)
    allowed = bool(known) or context.store.authorised(ins, context.vihf.name_id)
    return _answer(request, query, root, ins, None if known is None else allowed)


def set_authorization(context: Context) -> Element:
    request = context.envelope.body
    if request.tag != q(HABILITATIONS, "setAuthorization") or text(request.find(q(HABILITATIONS, "action"))) != "AJOUT":
        raise _bad("setAuthorization avec action AJOUT attendu")
    ins = patient_ins(context.vihf.resource_id, context.rules.ins_oids)
    if ins is None:
        raise _bad("resource-id du VIHF : INS^^^&OID&ISO^NH attendu")
    if context.store.patient(ins) is None:
        raise _bad("patient inconnu", "PATIENT_INCONNU")
    context.store.authorise(ins, context.vihf.structure_id, context.vihf.name_id)
    answer = etree.Element(q(HABILITATIONS, "setAuthorizationResponse"), nsmap={None: HABILITATIONS})
    etree.SubElement(answer, q(HABILITATIONS, "status")).text = "OK"
    return answer


def _answer(request: Element, query: Element | None, root: str, ins: str, allowed: bool | None) -> Element:
    answer = hl7_element("PRPA_IN201308UV02", ITSVersion="XML_1.0")
    answer.append(hl7_element("id", root=SANDBOX_ROOT, extension=str(uuid.uuid4())))
    answer.append(hl7_element("creationTime", value=hl7_now()))
    answer.append(hl7_element("interactionId", root="2.16.840.1.113883.1.6", extension="PRPA_IN201308UV02"))
    for name, code in (("processingCode", "P"), ("processingModeCode", "T"), ("acceptAckCode", "NE")):
        answer.append(hl7_element(name, code=code))
    sender_id = request.find(f"{q(HL7, 'sender')}/{q(HL7, 'device')}/{q(HL7, 'id')}")
    for role, device_root in (
        ("receiver", "" if sender_id is None else sender_id.get("root", "")),
        ("sender", DMP_DEVICE),
    ):
        element = etree.SubElement(answer, q(HL7, role), typeCode="RCV" if role == "receiver" else "SND")
        device = etree.SubElement(element, q(HL7, "device"), classCode="DEV", determinerCode="INSTANCE")
        etree.SubElement(device, q(HL7, "id"), root=device_root)
    acknowledgement = etree.SubElement(answer, q(HL7, "acknowledgement"))
    etree.SubElement(acknowledgement, q(HL7, "typeCode"), code="AA")
    message_id = request.find(q(HL7, "id"))
    target = etree.SubElement(etree.SubElement(acknowledgement, q(HL7, "targetMessage")), q(HL7, "id"))
    for name in ("root", "extension"):
        target.set(name, "" if message_id is None else message_id.get(name, ""))
    act = etree.SubElement(answer, q(HL7, "controlActProcess"), classCode="CACT", moodCode="EVN")
    etree.SubElement(act, q(HL7, "code"), code="PRPA_TE201308UV02", codeSystem="2.16.840.1.113883.1.6")
    if allowed is not None:
        event = etree.SubElement(etree.SubElement(act, q(HL7, "subject"), typeCode="SUBJ"), q(HL7, "registrationEvent"))
        event.set("classCode", "REG")
        event.set("moodCode", "EVN")
        etree.SubElement(event, q(HL7, "statusCode"), code="active")
        patient = etree.SubElement(etree.SubElement(event, q(HL7, "subject1"), typeCode="SBJ"), q(HL7, "patient"))
        patient.set("classCode", "PAT")
        etree.SubElement(patient, q(HL7, "id"), root=root, extension=ins)
        etree.SubElement(patient, q(HL7, "statusCode"), code="active")
        subject_of = etree.SubElement(patient, q(HL7, "subjectOf"), typeCode="SBJ")
        observation = etree.SubElement(subject_of, q(HL7, "administrativeObservation"), classCode="OBS", moodCode="EVN")
        etree.SubElement(observation, q(HL7, "code"), code="AUTORISATION", codeSystem=REASON_SYSTEM)
        value = etree.SubElement(observation, q(HL7, "value"), code="VALIDE" if allowed else "INTERDIT")
        value.set(q(XSI, "type"), "CE")
    ack = etree.SubElement(act, q(HL7, "queryAck"))
    query_id = None if query is None else query.find(q(HL7, "queryId"))
    if query_id is not None:
        ack.append(hl7_element("queryId", root=query_id.get("root", ""), extension=query_id.get("extension", "")))
    etree.SubElement(ack, q(HL7, "queryResponseCode"), code="NF" if allowed is None else "OK")
    if query is not None:
        act.append(copy.deepcopy(query))
    return answer


def _bad(reason: str, detail: str = "REQUETE_INVALIDE") -> Fault:
    return Fault("", reason, detail=detail)
