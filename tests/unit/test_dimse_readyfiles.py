"""Files for incoming instances made ahead by a thread of their own (drimbox/dimse/readyfiles.py)."""

from __future__ import annotations

import os
import time
from pathlib import Path

from drimbox.dimse.connection import ReceivedFile
from drimbox.dimse.readyfiles import ReadyFiles


def _filled(files: ReadyFiles, folder: Path, count: int) -> None:
    deadline = time.monotonic() + 10
    while len(list(folder.iterdir())) < count:
        assert time.monotonic() < deadline, "the files were not made ahead"
        time.sleep(0.01)


def test_a_file_made_ahead_is_taken_written_and_replaced(tmp_path: Path) -> None:
    files = ReadyFiles(tmp_path, depth=3)
    try:
        _filled(files, tmp_path, 3)
        for path in tmp_path.iterdir():
            os.utime(path, (1, 1))  # made long ago, as in an association idle for minutes
        made = files.take()
        assert made is not None
        descriptor, name = made
        assert Path(name).parent == tmp_path and os.fstat(descriptor).st_size == 0
        assert time.time() - os.fstat(descriptor).st_mtime < 5, "dated when taken: the sweep spares it"
        received = ReceivedFile(tmp_path, made)
        received.write(b"DICM data")
        received.close()
        assert Path(name).read_bytes() == b"DICM data"
        _filled(files, tmp_path, 4)  # three ready again, beside the one written
    finally:
        files.close()
    assert [p.name for p in tmp_path.iterdir()] == [Path(name).name], "close() removes only those not taken"


def test_a_file_swept_meanwhile_is_not_handed_out(tmp_path: Path) -> None:
    files = ReadyFiles(tmp_path, depth=2)
    try:
        _filled(files, tmp_path, 2)
        swept = {str(path) for path in tmp_path.iterdir()}
        for name in swept:
            os.unlink(name)  # as the incoming/ sweep would
        taken = files.take()
        assert taken is None or taken[1] not in swept  # (None, or one made again since)
        if taken is not None:
            assert Path(taken[1]).exists()
            os.close(taken[0])
    finally:
        files.close()


def test_after_close_or_in_a_folder_that_refuses_files_the_receiver_makes_its_own(tmp_path: Path) -> None:
    files = ReadyFiles(tmp_path / "missing")
    assert files.take() is None
    files.close()
    closed = ReadyFiles(tmp_path)
    closed.close()
    assert closed.take() is None
    assert list(tmp_path.iterdir()) == []
