"""The daemon's housekeeping stops retrieval processes left idle (drimbox/daemon.py)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from drimbox.daemon import Daemon


class _Retriever:
    def __init__(self, stopped: list[str] | Exception) -> None:
        self.stopped = stopped
        self.asked: list[float] = []

    def stop_idle_processes(self, idle_seconds: float) -> list[str]:
        self.asked.append(idle_seconds)
        if isinstance(self.stopped, Exception):
            raise self.stopped
        return self.stopped


def _daemon(minutes: float, retriever: _Retriever) -> SimpleNamespace:
    settings = SimpleNamespace(dimse=SimpleNamespace(retrieval_processes_idle_minutes=minutes))
    return SimpleNamespace(settings=settings, node=SimpleNamespace(retriever=retriever))


def test_processes_unused_for_the_configured_minutes_are_stopped_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    retriever = _Retriever(["c-get workers", "admission process"])
    with caplog.at_level("INFO", logger="drimbox.daemon"):
        Daemon._stop_idle_processes(_daemon(2.5, retriever))  # type: ignore[arg-type]
    assert retriever.asked == [150.0]
    [record] = [r for r in caplog.records if getattr(r, "event", "") == "retrieve.idle_stopped"]
    assert record.stopped == "c-get workers, admission process"  # type: ignore[attr-defined]


def test_zero_minutes_keeps_them_and_a_failure_does_not_stop_the_housekeeping(
    caplog: pytest.LogCaptureFixture,
) -> None:
    kept = _Retriever([])
    Daemon._stop_idle_processes(_daemon(0, kept))  # type: ignore[arg-type]
    assert kept.asked == []
    failing = _Retriever(RuntimeError("boom"))
    Daemon._stop_idle_processes(_daemon(10, failing))  # type: ignore[arg-type]
    assert failing.asked == [600.0]
    assert any(getattr(r, "event", "") == "retrieve.idle_stop_failed" for r in caplog.records)
