"""Audit records as PS3.15 A.5 messages (valid against the DICOM schema) and their syslog form."""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from pathlib import Path

import pytest
from lxml import etree

from drimbox.audit.atna import audit_message
from drimbox.audit.syslog import frame, syslog_message
from drimbox.audit.trail import StoredRecord

SCHEMA = etree.XMLSchema(etree.parse(str(Path(__file__).parents[1] / "fixtures" / "dicom-audit" / "dicom2024d.xsd")))
AT = datetime(2025, 3, 1, 12, 30, 5, 123456, tzinfo=UTC)
INS = "279035121518989"
SOURCE = "499700367909006"
BOX_DN = "CN=drimbox.other.test,OU=499700367909007,O=CABINET B,C=FR"


def _record(action: str, outcome: str = "success", *, actor: str = "810000000001", patient_id: str = "",
            study_uid: str = "", peer: str = "", detail: dict[str, object] | None = None) -> StoredRecord:  # fmt: skip
    return StoredRecord(seq=7, recorded_at=AT, action=action, actor=actor, outcome=outcome, patient_id=patient_id,
                        study_uid=study_uid, peer=peer, detail=detail or {})  # fmt: skip


def _message(record: StoredRecord) -> etree._Element:
    xml = audit_message(record, SOURCE, "drimbox.site.test")
    assert xml.startswith(b"<?xml version='1.0' encoding='UTF-8'?>")
    root = etree.fromstring(xml)
    assert SCHEMA.validate(root), SCHEMA.error_log
    return root


@pytest.mark.parametrize(
    ("action", "outcome", "event_id", "action_code", "indicator", "event_type"),
    [
        ("dicomweb.retrieve", "success", "110104", "R", "0", None),
        ("dicomweb.pixels", "success", "110104", "R", "0", None),
        ("dicomweb.metadata", "success", "110103", "R", "0", None),
        ("dicomweb.search", "success", "110112", "E", "0", None),
        ("dicomweb.access", "failure", "110103", "R", "4", None),
        ("tls.refused", "failure", "110113", "E", "4", "110126"),
        ("association.refused", "failure", "110113", "E", "4", "110126"),
        ("auth.refused", "failure", "110114", "E", "4", "110122"),
        ("hl7.received", "success", "110107", "C", "0", None),
        ("hl7.received", "failure", "110107", "C", "8", None),
        ("report.received", "success", "110107", "C", "0", None),
        ("publication.sent", "success", "110106", "R", "0", None),
        ("publication.accepted", "success", "110106", "R", "0", None),
        ("publication.refused", "failure", "110106", "R", "8", None),
        ("publication.withdrawn", "success", "110106", "D", "0", None),
        ("kos.publish", "success", "110106", "R", "0", None),
        ("kos.delete", "success", "110106", "D", "0", None),
        ("iocm.rejection", "success", "110103", "D", "0", None),
        ("instance.stored", "success", "110104", "C", "0", None),
        ("study.retrieved", "failure", "110104", "C", "8", None),
        ("pacs.indexed", "success", "110112", "E", "0", None),
        ("whitelist.refresh", "success", "110113", "E", "0", "110129"),
        ("whitelist.refresh", "failure", "110113", "E", "8", "110129"),
        ("config.changed", "success", "110113", "E", "0", "110131"),
        ("daemon.started", "success", "110100", "E", "0", "110120"),
        ("daemon.stopped", "success", "110100", "E", "0", "110121"),
        ("admin.publications", "success", "110113", "E", "0", "110132"),
        ("admin.audit", "success", "110101", "R", "0", None),
        ("something.new", "success", "110100", "E", "0", None),
        ("something.new", "failure", "110100", "E", "8", None),
    ],
)
def test_each_action_maps_to_its_dicom_event(action: str, outcome: str, event_id: str, action_code: str,
                                              indicator: str, event_type: str | None) -> None:  # fmt: skip
    root = _message(_record(action, outcome, patient_id=INS, study_uid="1.2.3.4", peer=BOX_DN))
    event = root.find("EventIdentification")
    assert event is not None
    assert (event.get("EventActionCode"), event.get("EventOutcomeIndicator")) == (action_code, indicator)
    assert event.get("EventDateTime") == "2025-03-01T12:30:05.123456Z"
    assert root.find("EventIdentification/EventID").get("csd-code") == event_id  # type: ignore[union-attr]
    types = [(code.get("csd-code"), code.get("codeSystemName")) for code in event.findall("EventTypeCode")]
    assert types[-1] == (action, "DRIMBOX")  # our own action always travels, for the events sharing an EventID
    assert types[:-1] == ([(event_type, "DCM")] if event_type else [])
    assert (event.find("EventOutcomeDescription") is None) == (outcome == "success")


def test_closing_event_reads_as_the_request_it_closes() -> None:
    root = _message(_record("dicomweb.completed", "failure", detail={"of": "dicomweb.retrieve", "bytes": 10}))
    assert root.find("EventIdentification/EventID").get("csd-code") == "110104"  # type: ignore[union-attr]
    assert root.find("EventIdentification").get("EventOutcomeIndicator") == "8"  # type: ignore[union-attr]


def test_patient_and_study_are_participant_objects_with_their_types() -> None:
    root = _message(_record("dicomweb.retrieve", patient_id=INS, study_uid="1.2.3.4", peer=BOX_DN,
                            detail={"sop_uid": "1.2.3.4.5.6", "bytes": 2048}))  # fmt: skip
    objects = {o.get("ParticipantObjectID"): o for o in root.findall("ParticipantObjectIdentification")}
    patient, study = objects[INS], objects["1.2.3.4"]
    assert (patient.get("ParticipantObjectTypeCode"), patient.get("ParticipantObjectTypeCodeRole")) == ("1", "1")
    id_type = patient.find("ParticipantObjectIDTypeCode")
    assert id_type is not None
    assert (id_type.get("csd-code"), id_type.get("codeSystemName"), id_type.get("originalText")) == (
        "2", "RFC-3881", "Patient Number")  # fmt: skip
    assert study.find("ParticipantObjectIDTypeCode").get("csd-code") == "110180"  # type: ignore[union-attr]
    assert study.find("ParticipantObjectDescription/SOPClass/Instance").get("UID") == "1.2.3.4.5.6"  # type: ignore[union-attr]
    details = {
        d.get("type"): base64.b64decode(d.get("value", "")).decode() for d in study.findall("ParticipantObjectDetail")
    }
    assert details == {"sop_uid": "1.2.3.4.5.6", "bytes": "2048"}


def test_participants_name_who_asked_and_which_side_we_were() -> None:
    root = _message(_record("dicomweb.retrieve", peer=BOX_DN))
    people = [(p.get("UserID"), p.get("UserIsRequestor"), [r.get("csd-code") for r in p.findall("RoleIDCode")],
               p.get("NetworkAccessPointID")) for p in root.findall("ActiveParticipant")]  # fmt: skip
    assert people == [("810000000001", "true", [], None), (BOX_DN, "false", ["110152"], None),
                      (SOURCE, "false", ["110153"], "drimbox.site.test")]  # fmt: skip
    assert root.find("AuditSourceIdentification").get("AuditSourceID") == SOURCE  # type: ignore[union-attr]

    stored = _message(_record("instance.stored", actor="ORTHANC", peer="10.0.0.7:4242"))
    first, us = stored.findall("ActiveParticipant")
    assert (first.get("UserID"), first.get("NetworkAccessPointID"), first.get("NetworkAccessPointTypeCode")) == (
        "ORTHANC", "10.0.0.7", "2")  # fmt: skip
    assert us.find("RoleIDCode").get("csd-code") == "110152"  # type: ignore[union-attr]  # we are the destination

    started = _message(_record("daemon.started", actor="system"))
    (alone,) = started.findall("ActiveParticipant")
    assert (alone.get("UserID"), alone.get("UserIsRequestor")) == (SOURCE, "true")


def test_refused_node_is_the_alert_subject_and_the_reason_is_told() -> None:
    root = _message(_record("tls.refused", "failure", actor="unauthenticated", peer="192.0.2.9:50123",
                            detail={"reason": "certificate revoked"}))  # fmt: skip
    (subject,) = root.findall("ParticipantObjectIdentification")
    assert subject.get("ParticipantObjectID") == "192.0.2.9:50123"
    assert subject.find("ParticipantObjectIDTypeCode").get("csd-code") == "110182"  # type: ignore[union-attr]
    assert root.findtext("EventIdentification/EventOutcomeDescription") == "certificate revoked"


def test_query_carries_the_query_in_base64() -> None:
    root = _message(_record("dicomweb.search", detail={"query": "PatientID=1&StudyDate=2024"}))
    query = root.find("ParticipantObjectIdentification")
    assert query is not None and query.get("ParticipantObjectTypeCodeRole") == "24"
    assert base64.b64decode(query.findtext("ParticipantObjectQuery") or "") == b"PatientID=1&StudyDate=2024"


def test_special_characters_are_escaped_not_injected() -> None:
    actor = "Dr <O'Brien> & \"Co\"</ActiveParticipant><x y='1'/>"
    reason = "bad ]]> <script> & \x00\x07 control"
    record = _record("auth.refused", "failure", actor=actor, patient_id="12&<3>", detail={"reason": reason})
    xml = audit_message(record, SOURCE, "drimbox.site.test")
    assert b"<O'Brien>" not in xml and b"<script>" not in xml and b"<x y=" not in xml
    root = _message(record)
    assert root.find("ActiveParticipant").get("UserID") == actor  # type: ignore[union-attr]
    assert root.findtext("EventIdentification/EventOutcomeDescription") == "bad ]]> <script> &  control"
    assert root.find("ParticipantObjectIdentification").get("ParticipantObjectID") == "12&<3>"  # type: ignore[union-attr]


def test_syslog_message_header_and_frame() -> None:
    success = syslog_message(b"<AuditMessage/>", timestamp=AT, hostname="drimbox.site.test", app_name="drimbox",
                             success=True)  # fmt: skip
    assert (
        success
        == b"<85>1 2025-03-01T12:30:05.123456Z drimbox.site.test drimbox - IHE+RFC-3881 - \xef\xbb\xbf<AuditMessage/>"
    )
    failure = syslog_message(b"x", timestamp=AT, hostname="my host", app_name="", success=False, procid="42")
    assert failure == b"<84>1 2025-03-01T12:30:05.123456Z my_host - 42 IHE+RFC-3881 - \xef\xbb\xbfx"
    assert frame("é".encode()) == b"2 \xc3\xa9"
