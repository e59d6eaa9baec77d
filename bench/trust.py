"""What trust costs: the audit chain's write rate, mutual TLS through our gate against uvicorn's own
TLS, and verifying the ANS whitelist.

1. Audit: records/s appended to the hash chain on SQLite, from one process and from 4 processes at
   once (they serialise on the chain head), and the chain verification rate.
2. Mutual TLS: N fresh connections (full handshake + one small GET each), sequential, to the same
   tiny app served (a) by `drimbox.mtls` (handshake done by us, CRL checked, whitelist DN checked,
   peer named to the app) and (b) by uvicorn's own `ssl_*` options with the same CA and CRLs
   (the reference: what the check and the audit hooks add). ms per connection, p50/p95.
3. Whitelist: the genuine ANS signed sample verified M times: ms per verification.

    .venv/bin/python -m bench.trust --records 5000 --connections 300
"""

from __future__ import annotations

import argparse
import datetime as dt
import multiprocessing
import resource
import socket
import ssl
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import uvicorn  # noqa: E402
from cryptography import x509  # noqa: E402
from starlette.applications import Starlette  # noqa: E402
from starlette.responses import PlainTextResponse  # noqa: E402
from starlette.routing import Route  # noqa: E402

from drimbox.audit.trail import ChainedAuditTrail  # noqa: E402
from drimbox.config import TlsSettings  # noqa: E402
from drimbox.index import db  # noqa: E402
from drimbox.mtls.server import MutualTlsServer  # noqa: E402
from drimbox.ports import AuditEvent  # noqa: E402
from drimbox.sandbox.pki import create_pki  # noqa: E402
from drimbox.whitelist.model import dn_of  # noqa: E402
from drimbox.whitelist.signature import verify_whitelist  # noqa: E402

SAMPLE = REPO / "tests" / "fixtures" / "drim-m-data" / "whitelist-signed-test.xml"


def _write(url: str, count: int) -> None:
    trail = ChainedAuditTrail(db.make_engine(url))
    for n in range(count):
        trail.record(AuditEvent("dicomweb.retrieve", "810000000001", patient_id="279035121518989",
                                study_uid=f"1.2.3.{n}", detail={"status": 200}, peer="CN=db2,OU=1,C=FR"))  # fmt: skip


def bench_audit(folder: Path, records: int) -> None:
    url = f"sqlite:///{folder / 'audit.db'}"
    engine = db.make_engine(url)
    db.upgrade(engine)
    began = time.perf_counter()
    _write(url, records)
    one = records / (time.perf_counter() - began)
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_write, args=(url, records // 4)) for _ in range(4)]
    began = time.perf_counter()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    four = (records // 4 * 4) / (time.perf_counter() - began)
    trail = ChainedAuditTrail(engine)
    began = time.perf_counter()
    report = trail.check()
    verify = report.checked / (time.perf_counter() - began)
    print(f"audit chain (SQLite)   append, 1 process: {one:8.0f} records/s   4 processes: {four:8.0f} records/s")
    print(f"                       verify: {verify:8.0f} records/s ({report.checked} records, intact)")


class _Audit:
    def record(self, event: AuditEvent) -> None:
        pass


def _serve(config: uvicorn.Config, sock: socket.socket) -> uvicorn.Server:
    server = uvicorn.Server(config)
    threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True).start()
    while not server.started:
        time.sleep(0.01)
    return server


def _connections(port: int, context: ssl.SSLContext, count: int) -> list[float]:
    """ms from connect to the whole first answer (TCP_NODELAY, as HTTP clients set it: without it
    Nagle's algorithm and delayed ACKs add 40 ms to both sides and hide the difference)."""
    times = []
    request = b"GET /ping HTTP/1.1\r\nHost: bench\r\n\r\n"
    for _ in range(count):
        began = time.perf_counter()
        with socket.create_connection(("127.0.0.1", port)) as raw:
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
                tls.sendall(request)
                answer = b""
                while not answer.endswith(b"pong"):
                    chunk = tls.recv(4096)
                    if not chunk:
                        break
                    answer += chunk
        assert answer.startswith(b"HTTP/1.1 200"), answer[:80]
        times.append((time.perf_counter() - began) * 1000)
    return times


def bench_mtls(folder: Path, count: int) -> None:
    pki = create_pki(folder / "pki", "499700367909006")
    dn = dn_of(x509.load_pem_x509_certificate(pki.organisation.auth_cert.read_bytes()))

    class Listed:
        def allows_dn(self, value: str) -> bool:
            return value == dn

        def allows_host(self, host: str) -> bool:
            return True

    app = Starlette(routes=[Route("/ping", lambda request: PlainTextResponse("pong"))])
    client = ssl.create_default_context(cafile=str(pki.ca_bundle))
    client.load_cert_chain(str(pki.organisation.auth_cert), str(pki.organisation.auth_key))
    client.maximum_version = ssl.TLSVersion.TLSv1_3
    options: dict[str, Any] = {"log_config": None, "access_log": False, "lifespan": "off", "log_level": "warning"}
    settings = TlsSettings(certificate=pki.server_cert, key=pki.server_key, client_ca=pki.ca_bundle,
                           crl_files=list(pki.crls))  # fmt: skip
    ours = MutualTlsServer(settings, _Audit(), lambda: Listed())
    sock = socket.create_server(("127.0.0.1", 0))
    server = _serve(ours.config(app, **options), sock)
    gate = _connections(sock.getsockname()[1], client, count)
    server.should_exit = True
    reference_config = uvicorn.Config(
        app,
        ssl_certfile=str(pki.server_cert),
        ssl_keyfile=str(pki.server_key),
        ssl_ca_certs=str(pki.ca_bundle),
        ssl_cert_reqs=ssl.CERT_REQUIRED,
        **options,
    )
    sock2 = socket.create_server(("127.0.0.1", 0))
    server2 = _serve(reference_config, sock2)
    reference = _connections(sock2.getsockname()[1], client, count)
    server2.should_exit = True
    for name, times in (
        ("drimbox.mtls (CRL + whitelist + audit hooks)", gate),
        ("uvicorn ssl_* (chain only)", reference),
    ):
        q = statistics.quantiles(times, n=20)
        print(f"mutual TLS, new connection + GET, {name:<44} p50 {q[9]:6.2f} ms  p95 {q[18]:6.2f} ms  "
              f"({1000 / statistics.mean(times):5.0f} connections/s)")  # fmt: skip


def bench_whitelist(rounds: int) -> None:
    data = SAMPLE.read_bytes()
    anchors = [cert for cert in _embedded(data) if cert.subject == cert.issuer]  # the sample embeds its root
    at = dt.datetime(2026, 10, 1, tzinfo=dt.UTC)
    began = time.perf_counter()
    for _ in range(rounds):
        listed = verify_whitelist(data, anchors, signer_cn="Liste Blanche DRIM-M", signer_ou="318751275100020", at=at)
    ms = (time.perf_counter() - began) * 1000 / rounds
    print(f"whitelist verification (ANS sample, {len(listed.domains)} domains, {len(data)} bytes): {ms:6.2f} ms each")


def _embedded(data: bytes) -> list[x509.Certificate]:
    import base64

    from lxml import etree

    root = etree.fromstring(data)
    values = root.iterfind(".//{http://www.w3.org/2000/09/xmldsig#}X509Certificate")
    return [x509.load_der_x509_certificate(base64.b64decode("".join((v.text or "").split()))) for v in values]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=5000)
    parser.add_argument("--connections", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=50)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="drimbox-bench-trust-") as tmp:
        folder = Path(tmp)
        bench_audit(folder, args.records)
        bench_mtls(folder, args.connections)
        bench_whitelist(args.rounds)
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")


if __name__ == "__main__":
    main()
