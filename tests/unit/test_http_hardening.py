"""The listener's own limits on real sockets: sizes, duplicate headers, rates, security headers."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import httpx
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from drimbox.config import LimitSettings
from drimbox.httpd.hardening import Hardening, RateLimiter
from drimbox.sandbox.http import serve_in_thread


def _app(limits: LimitSettings, limiter: RateLimiter | None = None) -> FastAPI:
    app = FastAPI()

    @app.get("/hello")
    def hello() -> JSONResponse:
        return JSONResponse({"hello": "world"})

    @app.post("/echo")
    async def echo(request: Request) -> JSONResponse:
        return JSONResponse({"bytes": len(await request.body())})

    app.add_middleware(Hardening, limits=limits, https=True, limiter=limiter)
    return app


@pytest.fixture
def base() -> Iterator[str]:
    limits = LimitSettings(max_body_bytes=2048, max_header_bytes=2048, requests_per_minute=6000, burst=600)
    server = serve_in_thread(_app(limits), "127.0.0.1", 0)
    yield f"http://127.0.0.1:{server.port}"
    server.stop()


def test_every_answer_carries_the_security_headers(base: str) -> None:
    for path in ("/hello", "/nowhere"):
        answer = httpx.get(base + path)
        assert answer.headers["x-content-type-options"] == "nosniff"
        assert answer.headers["x-frame-options"] == "DENY"
        assert "frame-ancestors 'none'" in answer.headers["content-security-policy"]
        assert answer.headers["strict-transport-security"].startswith("max-age=")


def test_sizes_and_duplicate_headers_are_refused_with_a_problem(base: str) -> None:
    too_big = httpx.post(base + "/echo", content=b"x" * 4096)
    assert too_big.status_code == 413 and too_big.headers["content-type"] == "application/problem+json"
    assert httpx.post(base + "/echo", content=b"x" * 1000).json() == {"bytes": 1000}

    def chunks() -> Iterator[bytes]:
        for _ in range(8):
            yield b"y" * 1000

    assert httpx.post(base + "/echo", content=chunks()).status_code == 413
    assert httpx.get(base + "/hello", headers={"X-Junk": "z" * 3000}).status_code == 431
    twice = [("Authorization", "Bearer a"), ("Authorization", "Bearer b")]
    answer = httpx.get(base + "/hello", headers=twice)
    assert answer.status_code == 400 and "more than once" in answer.json()["detail"]


def test_malformed_content_length_is_a_400_not_a_crash(base: str) -> None:
    host, port = base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as conn:
        conn.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 12abc\r\n\r\n")
        reply = conn.recv(4096)
    assert reply.startswith(b"HTTP/1.1 400")


def test_a_peer_over_its_rate_waits_while_others_go_on() -> None:
    now = [0.0]
    limiter = RateLimiter(per_minute=60, burst=2, clock=lambda: now[0])
    assert [limiter.take("ip:10.0.0.1") for _ in range(2)] == [0.0, 0.0]
    assert limiter.take("ip:10.0.0.1") == pytest.approx(1.0)
    assert limiter.take("ip:10.0.0.2") == 0.0
    now[0] += 1.0
    assert limiter.take("ip:10.0.0.1") == 0.0

    limits = LimitSettings(requests_per_minute=60, burst=2)
    server = serve_in_thread(_app(limits, RateLimiter(60, 2, clock=lambda: now[0])), "127.0.0.1", 0)
    try:
        answers = [httpx.get(f"http://127.0.0.1:{server.port}/hello") for _ in range(3)]
    finally:
        server.stop()
    assert [a.status_code for a in answers] == [200, 200, 429]
    assert answers[2].headers["retry-after"] == "1"
