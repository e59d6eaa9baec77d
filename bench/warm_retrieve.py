"""Retrievals in one long-lived process, as the daemon makes them: build once, warm up, then time.

Used by cget_throughput.py for its `ours-warm` row, driven over stdin so that its timed runs
interleave with the other tools' runs:

    .venv/bin/python -m bench.warm_retrieve CONFIG STUDY_UID RETIRED_FOLDER

prints `{"ready": true}` once warmed up, then, for each line read from stdin, retrieves the
study again and prints one JSON object: {"seconds": S, "stored": N, "bytes": B}. The first
retrieval (untimed) starts the C-GET worker and admission processes, as the daemon's first
request would. Before each retrieval the study's folder is moved into RETIRED_FOLDER (its index
rows kept, as after an eviction), so each one stores new files as a cold fetch does, instead of
renaming over the previous copies (which on ext4 forces their data out to disk first: ~17 ms per
27 MB file). The folder is moved, not deleted: see "Files are deleted at the end" in
bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from drimbox.config import load_settings
from drimbox.daemon import build_node, settle


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("config", type=Path)
    parser.add_argument("study_uid")
    parser.add_argument("retired", type=Path, help="where each retrieval's files are moved before the next")
    args = parser.parse_args()
    node = build_node(load_settings(args.config))
    settle()  # as `drimbox serve` does
    try:
        node.index_peer(next(iter(node.settings.pacs)), full=True)
        node.retriever.retrieve(args.study_uid)
        print(json.dumps({"ready": True}), flush=True)
        for count, _ in enumerate(sys.stdin):
            held = node.settings.store.folder / "store" / args.study_uid
            if held.exists():
                held.rename(args.retired / f"warm-{time.monotonic_ns()}-{count}")
            started = time.perf_counter()
            report = node.retriever.retrieve(args.study_uid)
            seconds = time.perf_counter() - started
            print(json.dumps({"seconds": seconds, "stored": report.stored, "bytes": report.bytes}), flush=True)
    finally:
        node.close()


if __name__ == "__main__":
    main()
