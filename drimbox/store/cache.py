"""Our store is a cache of the PACS: bounded in bytes, least recently served files go first.

The PACS keeps every instance, so evicting a file loses nothing: the index keeps the instance
(without a file) and the next request fetches it again. Files being served are pinned and never
evicted; a file opened before it is unlinked stays readable anyway (POSIX), so a response in
another process is not cut either. The index forgets a file before it is deleted, so the index
never points at a missing file.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

from drimbox.index.repository import IndexRepository
from drimbox.store.files import InstanceStore

log = logging.getLogger(__name__)

_BATCH = 500
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
    def pinned(self, sop_uid: str) -> Iterator[None]:
        """While inside, the instance's file is not evicted."""
        with self._lock:
            self._pins[sop_uid] += 1
        try:
            yield
        finally:
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
            chosen = []
            with self._lock:
                for held in candidates:
                    if freed >= goal:
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
            self.index.release_files(h.sop_uid for h in chosen)
            self.store.remove([h.path for h in chosen])
        return freed
