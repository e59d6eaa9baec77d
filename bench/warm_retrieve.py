"""Retrievals in one long-lived process, as the daemon makes them: build once, warm up, then time.

Used by cget_throughput.py for its `ours-warm` row:

    .venv/bin/python -m bench.warm_retrieve CONFIG STUDY_UID --repeat 3

prints one JSON object: {"seconds": [...], "stored": N, "bytes": B}. The first retrieval
(untimed) starts the C-GET worker processes, as the daemon's first request would. The study's
files are deleted before each retrieval (as an eviction would; index rows kept), so each one
stores new files as a cold fetch does instead of renaming over the previous copies (which on
ext4 forces their data out to disk first: ~17 ms per 27 MB file).
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

from drimbox.config import load_settings
from drimbox.daemon import build_node, settle


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("config", type=Path)
    parser.add_argument("study_uid")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    node = build_node(load_settings(args.config))
    settle()  # as `drimbox serve` does
    try:
        node.index_peer(next(iter(node.settings.pacs)), full=True)
        node.retriever.retrieve(args.study_uid)
        seconds, stored, size = [], 0, 0
        for _ in range(args.repeat):
            shutil.rmtree(node.settings.store.folder / "store" / args.study_uid, ignore_errors=True)
            started = time.perf_counter()
            report = node.retriever.retrieve(args.study_uid)
            seconds.append(time.perf_counter() - started)
            stored, size = report.stored, report.bytes
        print(json.dumps({"seconds": seconds, "stored": stored, "bytes": size}), flush=True)
    finally:
        node.close()


if __name__ == "__main__":
    main()
