"""A tiny OCSP responder (RFC 6960) for the sandbox PKI, so revocation by OCSP is tested offline.

HTTP POST `application/ocsp-request` on 127.0.0.1; answers signed by the intermediate's delegated
responder (`pki.issue_ocsp_responder`), "revoked" for the serials `pki.revoke` listed, "good" for
the others, "unauthorized" for a certificate the intermediate did not issue. `stop()` then `start()`
again simulates a responder that is down (the port refuses connections) and comes back.
"""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509 import ocsp

from drimbox.sandbox.pki import PkiFiles, issue_ocsp_responder, load_certificates, revoked_serials

MAX_REQUEST = 64 * 1024


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(microsecond=0)


class OcspResponder:
    """Answers for the certificates of `pki`'s intermediate; `validity` is each answer's
    nextUpdate − thisUpdate; `clock` dates the answers (tests pin it); `signer` (certificate, key)
    replaces the delegated responder, to play a forger."""

    def __init__(
        self,
        pki: PkiFiles,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        validity: dt.timedelta = dt.timedelta(hours=1),
        clock: Callable[[], dt.datetime] = _utcnow,
        signer: tuple[x509.Certificate, rsa.RSAPrivateKey] | None = None,
    ) -> None:
        self.pki = pki
        self.host, self.port = host, port
        self.validity = validity
        self.clock = clock
        if signer is None:
            cert_path, key_path = issue_ocsp_responder(pki)
            key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
            assert isinstance(key, rsa.RSAPrivateKey)
            signer = (load_certificates(cert_path)[0], key)
        self.certificate, self._key = signer
        self.issuer = load_certificates(pki.intermediate_cert)[0]
        self.requests = 0
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/ocsp"

    def start(self) -> OcspResponder:
        """Listen (on the same port when restarted) and answer in a background thread."""
        responder = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                if self.headers.get("Content-Type") != "application/ocsp-request" or not 0 < length <= MAX_REQUEST:
                    self.send_error(400)
                    return
                body = responder.answer(self.rfile.read(length))
                self.send_response(200)
                self.send_header("Content-Type", "application/ocsp-response")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        server = ThreadingHTTPServer((self.host, self.port), Handler)
        server.daemon_threads = True
        self.port = int(server.server_address[1])
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, name=f"sandbox-ocsp-{self.port}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def answer(self, der_request: bytes) -> bytes:
        """The DER OCSP response to a DER OCSP request."""
        self.requests += 1
        try:
            request = ocsp.load_der_ocsp_request(der_request)
        except ValueError:
            return _unsuccessful(ocsp.OCSPResponseStatus.MALFORMED_REQUEST)
        probe = ocsp.OCSPRequestBuilder().add_certificate(self.certificate, self.issuer, request.hash_algorithm)
        ours = probe.build()
        if (request.issuer_key_hash, request.issuer_name_hash) != (ours.issuer_key_hash, ours.issuer_name_hash):
            return _unsuccessful(ocsp.OCSPResponseStatus.UNAUTHORIZED)
        revoked = request.serial_number in revoked_serials(self.pki)["intermediate"]
        now = self.clock()
        builder = ocsp.OCSPResponseBuilder().add_response_by_hash(
            issuer_name_hash=request.issuer_name_hash,
            issuer_key_hash=request.issuer_key_hash,
            serial_number=request.serial_number,
            algorithm=request.hash_algorithm,
            cert_status=ocsp.OCSPCertStatus.REVOKED if revoked else ocsp.OCSPCertStatus.GOOD,
            this_update=now,
            next_update=now + self.validity,
            revocation_time=now if revoked else None,
            revocation_reason=None,
        )
        builder = builder.responder_id(ocsp.OCSPResponderEncoding.HASH, self.certificate)
        builder = builder.certificates([self.certificate])
        return builder.sign(self._key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)

    def __enter__(self) -> OcspResponder:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _unsuccessful(status: ocsp.OCSPResponseStatus) -> bytes:
    return ocsp.OCSPResponseBuilder.build_unsuccessful(status).public_bytes(serialization.Encoding.DER)
