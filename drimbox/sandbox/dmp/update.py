"""ITI-57 Update Document Set, restricted to what the DMP accepts from a DRIM-M box: availability
status changes (DRIM-M §4.8), an `lcm:SubmitObjectsRequest` with a SubmissionSet and
`UpdateAvailabilityStatus` associations SubmissionSet → entryUUID carrying OriginalStatus and
NewStatus. NewStatus `urn:asip:ci-sis:2010:StatusType:Deleted` withdraws the entry; Deprecated and
Approved are the standard ones.

XDSMetadataUpdateError: unknown entry, or OriginalStatus not the current status;
XDSMetadataUpdateOperationError: any other update operation or status; XDSPatientIdDoesNotMatch:
an entry of another patient than the submission set's (and the VIHF's).
"""

from __future__ import annotations

import uuid

from drimbox.sandbox.dmp.answers import refuse
from drimbox.sandbox.dmp.context import Context
from drimbox.sandbox.dmp.ebxml import APPROVED, DELETED, DEPRECATED, HAS_MEMBER, UPDATE_STATUS, is_uuid_urn
from drimbox.sandbox.dmp.metadata import Problems, read_association, read_registry_objects, read_submission_set
from drimbox.sandbox.dmp.provide import registry_form
from drimbox.sandbox.dmp.rules import check_submission_set
from drimbox.sandbox.dmp.store import NewSubmissionSet

OPERATION = "XDSMetadataUpdateOperationError"
UPDATE = "XDSMetadataUpdateError"


def update(context: Context) -> None:
    problems = Problems()
    request = context.envelope.body
    packages, extrinsic, elements = read_registry_objects(request, problems)
    submission_set = read_submission_set(packages, request, problems)
    if extrinsic:
        problems.add(OPERATION, "seule la mise à jour du statut (UpdateAvailabilityStatus) est acceptée")
    problems.raise_any()
    assert submission_set is not None
    check_submission_set(submission_set, context.rules.ins_oids, problems)
    problems.raise_any()
    if context.vihf.resource_id != submission_set.patient_id:
        raise refuse("XDSPatientIdDoesNotMatch", "resource-id du VIHF différent du patientId du lot", submission_set.id)
    associations = [read_association(element, problems) for element in elements]
    updates = [a for a in associations if a.type == UPDATE_STATUS]
    for association in associations:
        if association.type == HAS_MEMBER and association.source == submission_set.id:
            if association.target not in {u.id for u in updates}:
                problems.add(OPERATION, "HasMember ne peut viser qu'une association de mise à jour", association.id)
        elif association.type != UPDATE_STATUS:
            problems.add(OPERATION, f"association {association.type or '(absente)'} non acceptée", association.id)
    if not updates:
        problems.add(OPERATION, "aucune association UpdateAvailabilityStatus")
    changes: list[tuple[str, str]] = []
    for association in updates:
        original = association.slots.get("OriginalStatus", [])
        new = association.slots.get("NewStatus", [])
        target = context.store.entry(entry_uuid=association.target) if is_uuid_urn(association.target) else None
        if association.source != submission_set.id or len(original) != 1 or len(new) != 1:
            problems.add(OPERATION, "source = lot, slots OriginalStatus et NewStatus uniques attendus", association.id)
        elif target is None:
            problems.add(UPDATE, f"fiche inconnue {association.target}", association.id)
        elif target.patient_id != submission_set.patient_id:
            problems.add("XDSPatientIdDoesNotMatch", "fiche d'un autre patient", association.id)
        elif original[0] != target.status:
            problems.add(
                UPDATE, f"OriginalStatus {original[0]} différent du statut actuel {target.status}", association.id
            )
        elif new[0] not in (APPROVED, DEPRECATED, DELETED) or new[0] == original[0]:
            problems.add(OPERATION, f"NewStatus {new[0]} non accepté", association.id)
        else:
            changes.append((target.entry_uuid, new[0]))
    if context.store.submission_set_exists(unique_id=submission_set.unique_id):
        problems.add("XDSDuplicateUniqueIdInRegistry", "uniqueId du lot déjà enregistré", submission_set.id)
    problems.raise_any()
    entry_uuid = submission_set.id if is_uuid_urn(submission_set.id) else f"urn:uuid:{uuid.uuid4()}"
    record = NewSubmissionSet(entry_uuid, submission_set.unique_id, submission_set.patient_id, submission_set.source_id,
                              registry_form(submission_set.element, {submission_set.id: entry_uuid}, None))  # fmt: skip
    context.store.set_statuses(record, changes)
