"""`SoapDmpGateway`: the DMP as the publication core sees it, over XDS.b SOAP with mutual TLS.

Endpoints are `{dmp.url}/repository` (ITI-41) and `{dmp.url}/registry` (ITI-18, ITI-57) as the
DMP publishes them (DRIM-M §4.5). Lower-layer errors are translated here, once: network, timeout,
HTTP 5xx, 408/429 and unreadable answers become `DmpUnavailable`; Sender faults, Failure statuses
and other HTTP 4xx become `DmpRefused`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import TypeVar

import httpx
from lxml import etree

from drimbox.config import DmpSettings, SiteSettings
from drimbox.dmp.ebrim import new_id
from drimbox.dmp.entries import Document
from drimbox.dmp.identity import load_identity, tls_context
from drimbox.dmp.metadata import (
    get_documents_query,
    provide_and_register_request,
    report_unique_id,
    submit_objects_request,
    update_availability_request,
)
from drimbox.dmp.responses import RegistryOutcome, UnreadableAnswer, query_entries, registry_response
from drimbox.dmp.soap import Part, envelope, mtom_encode, soap_content_type, soap_payload
from drimbox.dmp.vihf import signed_assertion
from drimbox.dmp.xades import submission_signature
from drimbox.errors import DmpRefused, DmpUnavailable
from drimbox.publish.submission import DmpEntry, DmpIssue, Submission, Withdrawal
from drimbox.report.model import Identifier, Report

ITI41 = "urn:ihe:iti:2007:ProvideAndRegisterDocumentSet-b"
ITI18 = "urn:ihe:iti:2007:RegistryStoredQuery"
ITI57 = "urn:ihe:iti:2010:UpdateDocumentSet"
#: HTTP statuses that say "later", not "never" (RFC 9110 §15.5.9, RFC 6585 §4).
_RETRYABLE_4XX = {408, 429}

log = logging.getLogger("drimbox.dmp")
T = TypeVar("T")


class SoapDmpGateway:
    """Implements `DmpGateway`. The signing key is read once; a client is built unless one is given.

    Without an injected `client`, an https `dmp.url` requires `dmp.auth_pkcs12` (the DMP only talks
    mutual TLS); a plain-http URL (demo sandbox) gets no client certificate. `close()` closes the
    client only when the gateway built it.
    """

    def __init__(self, settings: DmpSettings, site: SiteSettings, client: httpx.Client | None = None) -> None:
        self._settings = settings
        self._site = site
        self._signer = load_identity(settings.signature_pkcs12, settings.signature_password, "dmp.signature_pkcs12")
        self._owns_client = client is None
        if client is None:
            needs_auth = settings.auth_pkcs12 is not None or settings.url.startswith("https://")
            auth = (
                load_identity(settings.auth_pkcs12, settings.auth_password, "dmp.auth_pkcs12") if needs_auth else None
            )
            client = httpx.Client(verify=tls_context(auth, settings.ca_bundle), timeout=settings.timeout_seconds)
        self._client = client
        base = settings.url.rstrip("/")
        self._repository = f"{base}/repository"
        self._registry = f"{base}/registry"

    def provide(self, submission: Submission) -> None:
        """ITI-41: the KOS (base64 part `<0.2>`), the signature (`<0.3>`), the CDA when given (`<0.4>`)."""
        content_type, payload = self._provide_request(submission)
        context = {"submission_uid": submission.submission_uid, "kos_uid": submission.manifest.sop_instance_uid}
        outcome = self._exchange("ITI-41", self._repository, content_type, payload, registry_response, context)
        self._warn_partial("ITI-41", outcome)

    def _provide_request(self, submission: Submission) -> tuple[str, bytes]:
        """The MTOM package: documents, their XAdES signature, the metadata naming all three, the VIHF."""
        kos = Document(new_id(), submission.manifest.sop_instance_uid, submission.kos)
        report = None
        if submission.report_document:
            report = Document(new_id(), report_unique_id(submission.report), submission.report_document)
        signed = [(d.unique_id, d.data) for d in (kos, report) if d is not None]
        xades = submission_signature(
            self._signer,
            submission.signature_uid,
            submission.submission_uid,
            signed,
            submission.submitted_at,
            self._settings.signature_algorithm,
        )
        signature = Document(new_id(), submission.signature_uid, xades)
        metadata = submit_objects_request(
            submission, self._settings, self._site, kos=kos, signature=signature, report=report
        )
        parts = [Part("0.2", kos.data, base64=True), Part("0.3", signature.data)]
        content_ids = {kos.entry_id: "0.2", signature.entry_id: "0.3"}
        if report is not None:
            parts.append(Part("0.4", report.data))
            content_ids[report.entry_id] = "0.4"
        body = provide_and_register_request(metadata, content_ids)
        report_model = submission.report
        soap = self._envelope(ITI41, self._repository, report_model, report_model.patient.ins, body, submission.flags)
        return mtom_encode(soap, parts, ITI41)

    def find_entry(self, patient_ins: Identifier, unique_id: str, report: Report) -> DmpEntry | None:
        """ITI-18 GetDocuments: the entry with this uniqueId whatever its status, or None."""
        soap = self._envelope(ITI18, self._registry, report, patient_ins, get_documents_query(unique_id))
        entries = self._exchange(
            "ITI-18", self._registry, soap_content_type(ITI18), soap, query_entries, {"unique_id": unique_id}
        )
        for entry in entries:
            if entry.unique_id in (unique_id, ""):
                return DmpEntry(entry.entry_uuid, unique_id, entry.status, entry.repository_unique_id)
        return None

    def withdraw(self, withdrawal: Withdrawal) -> None:
        """ITI-57: the entry goes from Approved to the DMP's Deleted status."""
        body = update_availability_request(withdrawal, self._settings, self._site)
        soap = self._envelope(ITI57, self._registry, withdrawal.report, withdrawal.report.patient.ins, body)
        outcome = self._exchange(
            "ITI-57",
            self._registry,
            soap_content_type(ITI57),
            soap,
            registry_response,
            {"submission_uid": withdrawal.submission_uid, "entry_uuid": withdrawal.entry_uuid},
        )
        self._warn_partial("ITI-57", outcome)

    def close(self) -> None:
        if self._owns_client:
            self._client.close()

    def __enter__(self) -> SoapDmpGateway:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _envelope(
        self,
        action: str,
        to: str,
        report: Report,
        patient: Identifier,
        body: etree._Element,
        flags: Mapping[str, str] | None = None,
    ) -> bytes:
        assertion = signed_assertion(report, patient, self._settings, self._site, self._signer, flags=flags)
        return envelope(action, to, assertion, body)

    def _exchange(
        self,
        transaction: str,
        url: str,
        content_type: str,
        payload: bytes,
        judge: Callable[[bytes], T],
        context: Mapping[str, str],
    ) -> T:
        """POST, translate, judge; one log line per call whatever the outcome."""
        started = time.monotonic()
        outcome, status = "unavailable", 0
        try:
            try:
                response = self._client.post(url, content=payload, headers={"Content-Type": content_type})
            except (httpx.HTTPError, httpx.InvalidURL) as exc:
                raise DmpUnavailable(f"DMP {transaction} at {url} unreachable: {exc!r}") from exc
            status = response.status_code
            result = self._judge(transaction, response, judge)
            outcome = "success"
            return result
        except DmpRefused:
            outcome = "refused"
            raise
        finally:
            fields = {
                "event": "dmp.call",
                "transaction": transaction,
                "endpoint": url,
                "http_status": status,
                "duration_ms": round((time.monotonic() - started) * 1000),
                "outcome": outcome,
                **context,
            }
            log.log(
                logging.INFO if outcome == "success" else logging.WARNING,
                "DMP %s %s",
                transaction,
                outcome,
                extra=fields,
            )

    @staticmethod
    def _judge(transaction: str, response: httpx.Response, judge: Callable[[bytes], T]) -> T:
        """Faults and registry statuses decide; the HTTP status only when the body says nothing."""
        status = response.status_code
        if status == 503 or status in _RETRYABLE_4XX:
            raise DmpUnavailable(f"DMP {transaction} answered HTTP {status}")
        try:
            payload = soap_payload(response.headers.get("Content-Type", ""), response.content)
            result = judge(payload)
        except (ValueError, UnreadableAnswer) as exc:
            if 400 <= status < 500:
                issue = DmpIssue(f"HTTP {status}", response.reason_phrase, location=str(response.url))
                raise DmpRefused(f"DMP {transaction} answered HTTP {status} without a SOAP answer", (issue,)) from exc
            raise DmpUnavailable(f"DMP {transaction} answered HTTP {status} with an unreadable body: {exc}") from exc
        if 400 <= status < 500:
            issue = DmpIssue(f"HTTP {status}", response.reason_phrase, location=str(response.url))
            raise DmpRefused(f"DMP {transaction} answered HTTP {status}", (issue,))
        if status >= 300:
            raise DmpUnavailable(f"DMP {transaction} answered HTTP {status}")
        return result

    @staticmethod
    def _warn_partial(transaction: str, outcome: RegistryOutcome) -> None:
        if outcome.partial or outcome.issues:
            log.warning(
                "DMP %s accepted with warnings",
                transaction,
                extra={
                    "event": "dmp.warnings",
                    "transaction": transaction,
                    "status": outcome.status,
                    "issues": [f"{i.code}: {i.context}" for i in outcome.issues],
                },
            )
