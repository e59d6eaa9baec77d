"""Empty files for incoming instances, created ahead by a thread of their own.

Receiving a small instance (a CT slice) costs the receiving thread little but creating its file:
allocating an inode is the costliest system call of the transfer (0.5 ms a slice on our test VM,
whose ext4 has no journal and skips every inode freed in the last minutes; less elsewhere), and
while the receiving thread does it, the PACS waits. A `ReadyFiles` keeps a few files created in
incoming/ ahead of need, from another thread (a system call does not hold the interpreter lock);
the receiving thread takes one in microseconds, or creates its own when none is ready.

The files are the C-GET association's: `close()` removes those not taken. A file whose name the
incoming/ sweep removed meanwhile (it sweeps old files; an idle association outlives none) is
not handed out, and a file taken is dated afresh (the sweep goes by modification time).
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import tempfile
import threading
from pathlib import Path

log = logging.getLogger(__name__)

#: Files kept ready: a CT slice arrives every ~1.5 ms, a file is made in 0.02-0.5 ms.
DEPTH = 4


class ReadyFiles:
    """Up to `depth` empty files (descriptor, name) kept ready in `folder`."""

    def __init__(self, folder: Path, depth: int = DEPTH) -> None:
        self._folder = folder
        self._ready: queue.Queue[tuple[int, str]] = queue.Queue()
        self._room = threading.Semaphore(depth)
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._fill, name="ready-files", daemon=True)
        self._thread.start()

    def take(self) -> tuple[int, str] | None:
        """A file ready to write (open for writing, empty), or None: create one yourself."""
        while not self._closed.is_set():
            try:
                descriptor, name = self._ready.get_nowait()
            except queue.Empty:
                return None
            self._room.release()
            os.utime(descriptor)  # it is written from now: the incoming/ sweep must see it as new
            if os.fstat(descriptor).st_nlink > 0:
                return descriptor, name
            os.close(descriptor)  # swept meanwhile
        return None

    def close(self) -> None:
        """Stop making files and remove those not taken."""
        self._closed.set()
        self._room.release()  # (wakes the thread if it waits for room)
        self._thread.join(timeout=5)
        while True:
            try:
                descriptor, name = self._ready.get_nowait()
            except queue.Empty:
                return
            os.close(descriptor)
            with contextlib.suppress(OSError):
                os.unlink(name)

    def _fill(self) -> None:
        while True:
            self._room.acquire()
            if self._closed.is_set():
                return
            try:
                made = tempfile.mkstemp(dir=self._folder, prefix="cstore-", suffix=".dcm")
            except OSError as exc:  # a full or read-only folder: receiving will say so itself
                log.warning("no file made ahead", extra={"event": "cstore.ready_files", "reason": str(exc)})
                return
            if self._closed.is_set():  # closed while creating: do not leave it behind
                os.close(made[0])
                with contextlib.suppress(OSError):
                    os.unlink(made[1])
                return
            self._ready.put(made)
