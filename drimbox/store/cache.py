"""Our store is a cache of the PACS: bounded in bytes, least recently served files go first.

The PACS keeps every instance, so evicting a file loses nothing: the index keeps the instance
(without a file) and the next request fetches it again. Files being served are pinned and never
evicted, whichever HTTP process serves them and whichever evicts: a pin is a count in its own
process and a shared `flock` on the file, which eviction tests without waiting. A file opened
before it is unlinked stays readable anyway (POSIX). The index forgets a file before it is
deleted, so the index never points at a missing file.
"""

from __future__ import annotations

import fcntl
import logging
import os
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

from drimbox.index.repository import HeldInstance, IndexRepository
from drimbox.store.files import InstanceStore

log = logging.getLogger(__name__)

_BATCH = 500
_LOCKED_AT_ONCE = 64  # files an eviction holds locked (and open) at a time
_HEADROOM = 0.9  # evict down to 90 % of the bound, so eviction does not run after every instance


class StoreCache:
    """Keeps the store under `max_bytes` (0: unbounded) by least-recently-served eviction."""

    def __init__(self, index: IndexRepository, store: InstanceStore, max_bytes: int) -> None:
        self.index = index
        self.store = store
        self.max_bytes = max_bytes
        self._pins: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._evicting = threading.Lock()

    @contextmanager
    def pinned(self, sop_uid: str, path: str | None = None) -> Iterator[None]:
        """While inside, the instance's file (at `path`) is not evicted, by this process or another."""
        with self._lock:
            self._pins[sop_uid] += 1
        shared = _lock(path, fcntl.LOCK_SH)[0] if path else None
        try:
            yield
        finally:
            if shared is not None:
                os.close(shared)  # (releases the lock)
            with self._lock:
                self._pins[sop_uid] -= 1
                if self._pins[sop_uid] <= 0:
                    del self._pins[sop_uid]

    def served(self, sop_uids: list[str]) -> None:
        """Record that these instances were just served (moves them to the back of the queue)."""
        self.index.touch(sop_uids)

    def evict(self) -> int:
        """Remove least recently served files until under the bound; return the bytes freed."""
        if self.max_bytes <= 0 or not self._evicting.acquire(blocking=False):
            return 0
        try:
            held = self.index.bytes_held()
            if held <= self.max_bytes:
                return 0
            freed = self._evict(held - int(self.max_bytes * _HEADROOM))
        finally:
            self._evicting.release()
        log.info("store evicted", extra={"event": "store.evicted", "bytes": freed, "bound": self.max_bytes})
        return freed

    def _evict(self, goal: int) -> int:
        freed = 0
        skipped = 0
        while freed < goal:
            candidates = self.index.least_recently_served(_BATCH + skipped)[skipped:]
            if not candidates:
                break
            chosen: list[HeldInstance] = []
            with self._lock:
                for held in candidates:
                    if freed >= goal or len(chosen) == _LOCKED_AT_ONCE:
                        break
                    if held.sop_uid in self._pins:
                        skipped += 1
                        continue
                    chosen.append(held)
                    freed += held.size
            # Outside the lock: a pin never waits on this database write and these unlinks (the
            # event loop takes pins). A file pinned after the choice is removed all the same, as
            # one pinned just after its removal would be: its reader opens it first (and keeps
            # reading it once unlinked) or finds it gone and fetches the instance again.
            taken, locks = _unpinned_elsewhere(chosen)
            skipped += len(chosen) - len(taken)
            freed -= sum(held.size for held in chosen if held not in taken)
            try:
                self.index.release_files(h.sop_uid for h in taken)
                self.store.remove([h.path for h in taken])
            finally:
                for descriptor in locks:
                    os.close(descriptor)
        return freed


def _unpinned_elsewhere(chosen: list[HeldInstance]) -> tuple[list[HeldInstance], list[int]]:
    """Those of `chosen` no other process pins, with the exclusive locks that keep it so until
    they are removed (a file gone already, or on a filesystem without locks, is taken unlocked)."""
    taken, locks = [], []
    for held in chosen:
        descriptor, pinned_elsewhere = _lock(held.path, fcntl.LOCK_EX)
        if pinned_elsewhere:
            continue
        taken.append(held)
        if descriptor is not None:
            locks.append(descriptor)
    return taken, locks


def _lock(path: str, kind: int) -> tuple[int | None, bool]:
    """An open descriptor of `path` holding a `kind` flock, taken without waiting (None if it could
    not be), and whether another process holds the other kind.

    Opened for writing to lock exclusively: NFS emulates flock with byte-range locks, where an
    exclusive one needs write access. A filesystem without locks (ENOLCK, EOPNOTSUPP) leaves the
    files unlocked, as before pins held across processes; a file gone already is not locked.
    """
    try:
        descriptor = os.open(path, (os.O_RDWR if kind == fcntl.LOCK_EX else os.O_RDONLY) | os.O_CLOEXEC)
    except OSError:
        return None, False
    try:
        fcntl.flock(descriptor, kind | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(descriptor)
        return None, True
    except OSError:
        os.close(descriptor)
        return None, False
    return descriptor, False
