"""Scripted DICOM peers for misbehaviour tests (pynetdicom servers on free loopback ports)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom import AE, evt

from drimbox.dimse.contexts import FIND_MODEL, VERIFICATION
from tests.support.peers import free_port


class FindScp:
    """A C-FIND SCP whose answers `on_find` scripts; subclasses misbehave on purpose."""

    ae_title = "SCRIPTED"

    def __init__(self) -> None:
        self.port = free_port()
        ae = AE(ae_title=self.ae_title)
        ae.add_supported_context(FIND_MODEL)
        ae.add_supported_context(VERIFICATION)
        self.server = ae.start_server(("127.0.0.1", self.port), block=False,
                                      evt_handlers=[(evt.EVT_C_FIND, self.on_find)])  # fmt: skip

    def peer(self) -> dict[str, object]:
        """This SCP as a [pacs.<name>] section."""
        return {"ae_title": self.ae_title, "host": "127.0.0.1", "port": self.port}

    def on_find(self, event: Any) -> Iterator[tuple[int, Dataset | None]]:
        yield 0x0000, None

    def stop(self) -> None:
        self.server.shutdown()
