"""Shared fixtures: real peers (Orthanc, dcmqrscp, PostgreSQL) and drimbox nodes built on them."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from drimbox.config import load_settings
from drimbox.daemon import Node, build_node
from tests.support.peers import DcmQrScp, Orthanc, Postgres, free_port, loopback_shim

BOX_AET = "DRIMBOX"


def _require(tool: str) -> None:
    if shutil.which(tool) is None:
        pytest.fail(f"{tool} is not installed: run the README's test command (./run test), which installs it")


@pytest.fixture(scope="session")
def shim(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return loopback_shim(tmp_path_factory.mktemp("shim"))


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    server = Postgres().start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def orthanc_server(tmp_path_factory: pytest.TempPathFactory, shim: Path) -> Iterator[Orthanc]:
    _require("Orthanc")
    server = Orthanc(tmp_path_factory.mktemp("orthanc"), shim).start()
    yield server
    server.stop()


@pytest.fixture
def orthanc(orthanc_server: Orthanc) -> Iterator[Orthanc]:
    """The session's Orthanc, emptied before each test."""
    orthanc_server.clear()
    yield orthanc_server


def write_config(
    folder: Path,
    *,
    peers: dict[str, dict[str, Any]],
    dimse_port: int,
    http_port: int,
    database_url: str | None = None,
    accept_from: tuple[str, ...] = (),
    auth: dict[str, Any] | None = None,
    extra: str = "",
) -> Path:
    """A demo-mode configuration file for a test node."""
    lines = [
        'mode = "demo"',
        "[site]",
        'structure_id = "000000000"',
        'name = "Test site"',
        "[http]",
        'bind = "127.0.0.1"',
        f"port = {http_port}",
        f'public_base_url = "http://127.0.0.1:{http_port}"',
        "[dimse]",
        'bind = "127.0.0.1"',
        f"port = {dimse_port}",
        f'ae_title = "{BOX_AET}"',
        "idle_timeout = 30",
        f"accept_from = {list(accept_from)!r}".replace("'", '"'),
        "[store]",
        f'folder = "{folder / "data"}"',
        "[index]",
        "interval_minutes = 0",
    ]
    if database_url:
        lines += ["[database]", f'url = "{database_url}"']
    lines.append("[auth]")
    for key, value in (auth or {"introspection_url": "http://127.0.0.1:9/introspect"}).items():
        lines.append(f"{key} = {value!r}".replace("'", '"'))
    if extra:
        lines.append(extra)
    # Nodes of tests that are not about publication have no DMP: no MLLP listener, no worker.
    for section in ("hl7", "publication"):
        if f"[{section}]" not in extra:
            lines += [f"[{section}]", "enabled = false"]
    for name, peer in peers.items():
        lines.append(f"[pacs.{name}]")
        for key, value in peer.items():
            lines.append(f"{key} = {value!r}".replace("'", '"'))
    path = folder / "drimbox.toml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


NodeFactory = Callable[..., Node]


@pytest.fixture
def make_node(tmp_path: Path) -> Iterator[NodeFactory]:
    """Build drimbox nodes on real peers; their DICOM listeners are stopped at the end."""
    nodes: list[Node] = []

    def factory(
        peers: dict[str, dict[str, Any]],
        database_url: str | None = None,
        folder: Path | None = None,
        dimse_port: int | None = None,
        accept_from: tuple[str, ...] = (),
    ) -> Node:
        where = folder or tmp_path / f"box{len(nodes)}"
        where.mkdir(parents=True, exist_ok=True)
        port = dimse_port or free_port()
        config = write_config(where, peers=peers, dimse_port=port, http_port=free_port(), database_url=database_url,
                              accept_from=accept_from)  # fmt: skip
        node = build_node(load_settings(config))
        node.config_path = config  # type: ignore[attr-defined]
        nodes.append(node)
        return node

    yield factory
    for node in nodes:
        node.close()


def orthanc_peer(orthanc: Orthanc, retrieve: str = "c-get", **extra: Any) -> dict[str, Any]:
    return {
        "ae_title": orthanc.ae_title,
        "host": "127.0.0.1",
        "port": orthanc.dicom_port,
        "retrieve": retrieve,
        **extra,
    }


def register_with_orthanc(orthanc: Orthanc, node: Node) -> None:
    """Declare the node's AE in Orthanc so C-MOVE can target it."""
    host, port = node.scp.address
    httpx.put(
        f"{orthanc.url}/modalities/{BOX_AET}", json={"AET": BOX_AET, "Host": host, "Port": port}, timeout=10
    ).raise_for_status()


@pytest.fixture
def dcmqrscp_factory(tmp_path: Path, shim: Path) -> Iterator[Callable[..., DcmQrScp]]:
    _require("dcmqrscp")
    servers: list[DcmQrScp] = []

    def factory(files: list[Path], destinations: dict[str, tuple[str, str, int]]) -> DcmQrScp:
        server = DcmQrScp(tmp_path / f"qr{len(servers)}", shim, destinations).start(files)
        servers.append(server)
        return server

    yield factory
    for server in servers:
        server.stop()
