"""ITI-43 Retrieve Document Set: the documents come back as MTOM parts (the PoC reads the KOS
from the `application/octet-stream`-ish part of the multipart answer, DRIM-M §4.8).

Unknown repository → XDSUnknownRepositoryId; unknown document, Deleted entry or an entry of another
patient than the VIHF's → XDSDocumentUniqueIdError (the DMP does not reveal other records).
Status Success, PartialSuccess or Failure as IHE says.
"""

from __future__ import annotations

from drimbox.sandbox.dmp.answers import Fault, RegistryIssue
from drimbox.sandbox.dmp.context import Context
from drimbox.sandbox.dmp.ebxml import DELETED, FAILURE, PARTIAL_SUCCESS, SUCCESS, XDSB, q, text

Found = tuple[str, str, str, bytes]  # repository, uniqueId, mimeType, bytes


def retrieve(context: Context) -> tuple[str, list[Found], list[RegistryIssue]]:
    request = context.envelope.body
    asked = request.findall(q(XDSB, "DocumentRequest"))
    if request.tag != q(XDSB, "RetrieveDocumentSetRequest") or not asked:
        raise Fault(
            "", "xdsb:RetrieveDocumentSetRequest avec au moins un DocumentRequest attendu", detail="CORPS_INATTENDU"
        )
    found: list[Found] = []
    issues: list[RegistryIssue] = []
    for document in asked:
        repository = text(document.find(q(XDSB, "RepositoryUniqueId")))
        unique_id = text(document.find(q(XDSB, "DocumentUniqueId")))
        entry = context.store.entry(unique_id=unique_id) if unique_id else None
        if repository != context.rules.repository_uid:
            issues.append(RegistryIssue("XDSUnknownRepositoryId", f"dépôt inconnu {repository!r}", unique_id))
        elif entry is None or entry.status == DELETED or entry.patient_id != context.vihf.resource_id:
            issues.append(RegistryIssue("XDSDocumentUniqueIdError", f"document inconnu {unique_id!r}", unique_id))
        else:
            found.append((repository, unique_id, entry.mime_type, entry.document))
    status = SUCCESS if not issues else PARTIAL_SUCCESS if found else FAILURE
    return status, found, issues
