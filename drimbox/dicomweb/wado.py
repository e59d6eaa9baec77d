"""WADO-RS (PS3.18 §10.4): instances, metadata, as stored or transcoded, streamed from our store.

Instances we hold are sent straight from their files; the others are fetched from the PACS
on demand and each is sent as soon as it has landed (`fetching.py`). The first part is found
before the response starts, so an unknown or unreachable study still gets a proper status.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import logging
import tempfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import StreamingResponse

from drimbox.dicomweb import multipart
from drimbox.dicomweb.accept import NotAcceptable, SyntaxChoice, accepts_json, dicom_syntaxes, parse_accept
from drimbox.dicomweb.access import AccessScope
from drimbox.dicomweb.fetching import RetrievalHub
from drimbox.dicomweb.problems import Problem
from drimbox.dicomweb.streaming import Piece, PiecesResponse
from drimbox.errors import InvalidInstance, RetrieveFailed
from drimbox.index.repository import HeldInstance, IndexRepository
from drimbox.store import metadata
from drimbox.store.cache import StoreCache
from drimbox.store.pixels import TranscodeError
from drimbox.uids import checked_uid

log = logging.getLogger(__name__)

DICOM = "application/dicom"
DICOM_JSON = "application/dicom+json"
_SPOOL = 8 << 20


class Transcoder(Protocol):
    """Writes an instance in another transfer syntax (lossless unless the caller allows lossy)."""

    def can(self, held: HeldInstance, target: str) -> bool: ...

    def write(self, path: Path, target: str, out: BinaryIO) -> None: ...


@dataclass
class Phase:
    """Where an instance selection is: still yielding held files, or waiting on the PACS."""

    fetching: bool = False


def _batched(chunks: Iterator[bytes], size: int = multipart.CHUNK) -> Iterator[bytes]:
    """Join small chunks into writes of about `size`: each chunk costs the server a thread hop,
    and a study's metadata array is one small chunk per instance."""
    pending: list[bytes] = []
    held = 0
    for chunk in chunks:
        if not pending and len(chunk) >= size:
            yield chunk
            continue
        pending.append(chunk)
        held += len(chunk)
        if held >= size:
            yield b"".join(pending)
            pending, held = [], 0
    if pending:
        yield b"".join(pending)


class NoTranscoder:
    """Serves instances only as stored."""

    def can(self, held: HeldInstance, target: str) -> bool:
        return False

    def write(self, path: Path, target: str, out: BinaryIO) -> None:
        raise NotAcceptable("transcoding is not available")


@dataclass
class Wado:
    """What WADO-RS reads from: the index, the store's files, the PACS through the hub."""

    index: IndexRepository
    hub: RetrievalHub
    public_prefix: str
    transcoder: Transcoder
    cache: StoreCache
    work_folder: Path | None = None  # where partial files go (the store's incoming/)
    prefer_client_syntax: bool = False

    # --- which instances, from where ---------------------------------------------------

    def instances(self, study: str, series: str | None = None, sop: str | None = None,
                  phase: Phase | None = None) -> Iterator[HeldInstance]:  # fmt: skip
        """The instances asked for: those we hold at once, then the others as they arrive from the PACS.

        `phase.fetching` turns true when the rest waits on the PACS: what is yielded from then on
        should reach the client at once rather than be batched.
        """
        wanted, held = self._held(study, series, sop)
        sent: set[str] = set()
        for one in held:
            if Path(one.path).is_file():
                sent.add(one.sop_uid)
                yield one
        yield from self._arriving(study, series, sop, wanted, sent, phase)

    def _held(self, study: str, series: str | None, sop: str | None) -> tuple[set[str], list[HeldInstance]]:
        """The UIDs of the instances asked for, and those of them the index says we hold (404 if unknown)."""
        if sop is not None:  # one instance: one indexed lookup, not a scan of its series
            one = self.index.held_one(sop)
            if one is not None and (one.study_uid, one.series_uid) == (study, series) and Path(one.path).is_file():
                return {sop}, [one]
        known = self.index.instance_uids(study, series)
        if not known and not self._known(study, series):
            raise Problem(404, "no such study or series on this box")
        if sop is None:
            return known, self.index.held(study, series)
        if sop not in known:
            raise Problem(404, "no such instance in this series")
        return {sop}, [held for held in self.index.held(study, series) if held.sop_uid == sop]

    def _arriving(self, study: str, series: str | None, sop: str | None, wanted: set[str], sent: set[str],
                  phase: Phase | None) -> Iterator[HeldInstance]:  # fmt: skip
        """Those of `wanted` not in `sent` (read when first asked), from the PACS as they land; `sent` grows."""
        if wanted <= sent:
            return
        if phase is not None:
            phase.fetching = True
        for path in self._from_pacs(study, series, sent):
            uid = path.stem
            if uid in sent or (sop is not None and uid != sop):
                continue
            landed = self.index.held_one(uid)
            if landed is None:
                continue  # evicted already, or refused: counted as missing below
            if landed.study_uid != study or (series is not None and landed.series_uid != series):
                log.warning("foreign instance not served", extra={"event": "wado.foreign", "study_uid": study})
                continue  # a PACS answering with another study's instance must not leak it
            sent.add(uid)
            yield landed
            if sop is not None:
                return
        missing = wanted - sent
        if missing:
            # Raising after the first part cuts the response: the client sees it incomplete.
            raise RetrieveFailed(f"the PACS delivered {len(sent)} of {len(sent) + len(missing)} instances")

    def _from_pacs(self, study: str, series: str | None, held: set[str]) -> Iterator[Path]:
        """What the PACS sends for the request: the series asked for; for a study, one retrieval of
        it (joined if running), unless part of it is here or on its way in series retrievals: then
        each series still missing, one after the other (a series being fetched is followed, a
        series we hold is not fetched again)."""
        if series is not None:
            expected = self.index.instance_uids(study, series)
            # (a retrieval that ended since the request looked may have brought them all)
            landed = functools.partial(self._landed, study, series, expected) if expected else None
            yield from self.hub.follow(study, series, held=landed)
            return
        by_series = self.index.instances_by_series(study)
        if not by_series:  # instances unknown to the index: the study's retrieval (joined if running)
            yield from self.hub.follow(study)
            return
        # Running, or nothing of it here and none of its series on its way: the whole study.
        whole = self.hub.follow_study(study, lambda: not self.index.held(study))
        if whole is not None:
            yield from whole
            return
        missing = [uid for uid, sops in by_series.items() if not set(sops) <= held]
        for series_uid in missing:
            landed = functools.partial(self._landed, study, series_uid, set(by_series[series_uid]))
            yield from self.hub.follow(study, series_uid, held=landed)

    def _landed(self, study: str, series: str, expected: set[str]) -> list[Path] | None:
        """The files of a series if all have landed (a retrieval that just ended brought them), else None."""
        here = [Path(h.path) for h in self.index.held(study, series) if Path(h.path).is_file()]
        return here if expected <= {path.stem for path in here} else None

    def _known(self, study: str, series: str | None) -> bool:
        return self.index.series_known(study, series) if series else self.index.study_known(study)

    # --- retrieve instances --------------------------------------------------------------

    def retrieve(self, request: Request, scope: AccessScope, study: str, series: str | None = None,
                 sop: str | None = None) -> PiecesResponse:  # fmt: skip
        """Held instances sent as stored come first, as `ready` parts (they only open files); then,
        from a worker thread, those to transcode and those the PACS sends."""
        choice = dicom_syntaxes(parse_accept(request.headers.get("accept")))
        phase = Phase()
        wanted, held = self._held(study, series, sop)
        as_stored, others = self._sorted(choice, held)
        sent = {one.sop_uid for one in as_stored + others}
        arriving = self._arriving(study, series, sop, wanted, sent, phase)
        boundary = multipart.new_boundary()
        served: list[str] = []
        first_part: Iterator[Piece] = iter(())
        if not as_stored:
            first = others.pop(0) if others else next(arriving, None)
            if first is None:
                raise Problem(404 if sop else 502, "the PACS did not deliver the instances asked for; retry later")
            # Nothing goes as stored: a 406, or a 422 if the first cannot be transcoded, before anything is sent.
            first_part = self._primed(boundary, first, self._syntax(choice, first))
            served.append(first.sop_uid)

        def body() -> Iterator[Piece]:
            yield from first_part
            for held in itertools.chain(others, arriving):
                try:
                    part = self._primed(boundary, held, self._syntax(choice, held))
                except (NotAcceptable, TranscodeError, InvalidInstance) as exc:
                    log.warning("instance skipped", extra={"event": "wado.skipped", "reason": str(exc)})
                    continue
                except FileNotFoundError:  # evicted since the request began: the PACS sends it after these
                    sent.discard(held.sop_uid)
                    continue
                yield from part
                served.append(held.sop_uid)
            yield multipart.closing(boundary)
            self.cache.served(served)

        return PiecesResponse(_logged(body(), study), lambda: phase.fetching,
                              headers={"Content-Type": multipart.content_type(boundary, DICOM)},
                              ready=_logged(self._stored_parts(boundary, as_stored, sent, served), study))  # fmt: skip

    def _sorted(self, choice: SyntaxChoice, held: list[HeldInstance]) -> tuple[list[HeldInstance], list[HeldInstance]]:
        """Of the held instances whose file is here: those sent as stored, and the others (to
        transcode, or to skip). Decided without reading any file."""
        as_stored: list[HeldInstance] = []
        others: list[HeldInstance] = []
        for one in held:
            if not Path(one.path).is_file():
                continue  # the PACS sends it (`_arriving`)
            if choice.sends_as_stored(one.transfer_syntax_uid, transcode=self.prefer_client_syntax):
                as_stored.append(one)
            else:
                others.append(one)
        return as_stored, others

    def _stored_parts(self, boundary: str, as_stored: list[HeldInstance], sent: set[str],
                      served: list[str]) -> Iterator[Piece]:  # fmt: skip
        """Parts of files sent as stored, each pinned until its file is open (a file opened stays
        readable once unlinked). One evicted since the index was read leaves `sent`: the PACS sends
        it again after these."""
        for held in as_stored:
            try:
                part = self._primed(boundary, held, held.transfer_syntax_uid)  # opens the file
            except FileNotFoundError:
                sent.discard(held.sop_uid)
                continue
            yield from part
            served.append(held.sop_uid)

    def _syntax(self, choice: SyntaxChoice, held: HeldInstance) -> str:
        return choice.for_instance(held.transfer_syntax_uid, lambda _, target: self.transcoder.can(held, target),
                                   transcode=self.prefer_client_syntax)  # fmt: skip

    def _primed(self, boundary: str, held: HeldInstance, syntax: str) -> Iterator[Piece]:
        """The part, started: a transcoding failure raises here, before its first byte is sent
        (the transcoded instance is spooled whole before its part header)."""
        part = self._part(boundary, held, syntax)
        head: Piece = next(part, b"")
        return itertools.chain((head,), part)

    def _part(self, boundary: str, held: HeldInstance, syntax: str) -> Iterator[Piece]:
        with self.cache.pinned(held.sop_uid, held.path):
            yield from self._unpinned_part(boundary, held, syntax)

    def _unpinned_part(self, boundary: str, held: HeldInstance, syntax: str) -> Iterator[Piece]:
        location = metadata.instance_base(self.public_prefix, held.study_uid, held.series_uid, held.sop_uid)
        if syntax == held.transfer_syntax_uid:
            yield from multipart.file_part_segments(boundary, DICOM, Path(held.path), transfer_syntax=syntax,
                                                    location=location)  # fmt: skip
            return
        with tempfile.SpooledTemporaryFile(max_size=_SPOOL, dir=_dir(self.work_folder)) as spool:
            self.transcoder.write(Path(held.path), syntax, spool)  # type: ignore[arg-type]
            length = spool.tell()
            spool.seek(0)
            yield multipart.part_header(boundary, DICOM, length, transfer_syntax=syntax, location=location)
            yield from multipart.file_chunks(spool, length)  # type: ignore[arg-type]
            yield b"\r\n"

    # --- metadata --------------------------------------------------------------------------

    def metadata(self, request: Request, scope: AccessScope, study: str, series: str | None = None,
                 sop: str | None = None) -> Response:  # fmt: skip
        if not accepts_json(parse_accept(request.headers.get("accept"))):
            raise NotAcceptable("metadata is application/dicom+json; the request accepts neither it nor JSON")
        held = list(self.instances(study, series, sop))
        if not held:
            raise Problem(502, "the PACS did not deliver the instances asked for; retry later")
        self._describe(held)
        etag = _etag(self.public_prefix, held)
        headers = {"ETag": etag, "Cache-Control": "private, no-cache", "Vary": "Accept-Encoding"}
        gzipped = _accepts_gzip(request.headers.get("accept-encoding", ""))
        if gzipped:
            headers["ETag"] = etag = etag[:-1] + '-gz"'  # one validator per content coding (RFC 9110 §8.8.3)
        if etag in _etags(request.headers.get("if-none-match")):
            return Response(status_code=304, headers=headers)
        if gzipped:
            headers["Content-Encoding"] = "gzip"
            return StreamingResponse(_gzipped(self._plain_array(held)), media_type=DICOM_JSON, headers=headers)
        return StreamingResponse(_batched(self._plain_array(held)), media_type=DICOM_JSON, headers=headers)

    def _describe(self, held: list[HeldInstance]) -> None:
        """Compute the metadata the index lacks (a store older than the metadata table, a failure
        at intake), before the response starts: a failure then is a clear error, not a cut body."""
        missing = set(self.index.metadata_missing([h.sop_uid for h in held]))
        for instance in held:
            if instance.sop_uid in missing:
                base = metadata.instance_base("", instance.study_uid, instance.series_uid, instance.sop_uid)
                self.index.save_metadata(instance.sop_uid, metadata.file_document(Path(instance.path), base))

    def _plain_array(self, held: list[HeldInstance]) -> Iterator[bytes]:
        """`[`, each instance's JSON, `]`: documents read from the index a few hundred at a time."""
        separator = b"["
        for start in range(0, len(held), _METADATA_BATCH):
            uids = [h.sop_uid for h in held[start : start + _METADATA_BATCH]]
            documents = self.index.metadata_documents(uids)
            for uid in uids:
                document = documents.get(uid)
                if document is None:  # removed from the index since the response started
                    log.info("metadata gone", extra={"event": "wado.metadata_gone", "sop_uid": uid})
                    continue
                yield separator
                separator = b","
                yield metadata.with_prefix(zlib.decompress(document, wbits=31), self.public_prefix)
        yield b"[]" if separator == b"[" else b"]"


_METADATA_BATCH = 256


def _etag(public_prefix: str, held: list[HeldInstance]) -> str:
    """A strong validator of the metadata: changes whenever an instance is stored again (its
    `stored_at`), joins or leaves, and when the public base URL of the BulkDataURIs changes."""
    versions = [(h.sop_uid, h.stored_at.isoformat() if h.stored_at else "") for h in held]
    return '"' + hashlib.sha256(repr((public_prefix, versions)).encode()).hexdigest()[:32] + '"'


def _accepts_gzip(header: str) -> bool:
    for coding in header.lower().split(","):
        name, _, params = coding.strip().partition(";")
        if name.strip() in ("gzip", "*"):
            return params.replace(" ", "") not in ("q=0", "q=0.0", "q=0.00", "q=0.000")
    return False


def _etags(header: str | None) -> set[str]:
    if not header:
        return set()
    return {tag.strip().removeprefix("W/") for tag in header.split(",")}


def _gzipped(chunks: Iterator[bytes]) -> Iterator[bytes]:
    """One gzip stream (level 1: fast, and JSON still shrinks about 10 times).

    Concatenating the instances' own gzip members would be cheaper, but common clients (httpx
    among them) decode only the first member of a multi-member body.
    """
    packer = zlib.compressobj(1, zlib.DEFLATED, 31)
    for chunk in chunks:
        packed = packer.compress(chunk)
        if packed:
            yield packed
    yield packer.flush()


def _logged(body: Iterator[Piece], study: str) -> Iterator[Piece]:
    """A failure after the response started cannot change its status: log it, and cut the
    connection (by raising) so the client sees an incomplete body rather than a short study."""
    try:
        yield from body
    except Exception as exc:
        log.warning("response cut", extra={"event": "wado.cut", "study_uid": study, "reason": str(exc)})
        raise


def wado_router(wado: Wado, authorize: Callable[..., AccessScope]) -> APIRouter:
    """Routes of WADO-RS retrieve and metadata at study, series and instance level."""
    router = APIRouter()
    guard = Depends(authorize)

    @router.get("/studies/{study}", response_class=StreamingResponse)
    def study_instances(study: str, request: Request, scope: AccessScope = guard) -> Response:
        return wado.retrieve(request, scope, _uid(study))

    @router.get("/studies/{study}/series/{series}", response_class=StreamingResponse)
    def series_instances(study: str, series: str, request: Request, scope: AccessScope = guard) -> Response:
        return wado.retrieve(request, scope, _uid(study), _uid(series))

    @router.get("/studies/{study}/series/{series}/instances/{sop}", response_class=StreamingResponse)
    def instance(study: str, series: str, sop: str, request: Request, scope: AccessScope = guard) -> Response:
        return wado.retrieve(request, scope, _uid(study), _uid(series), _uid(sop))

    @router.get("/studies/{study}/metadata")
    def study_metadata(study: str, request: Request, scope: AccessScope = guard) -> Response:
        return wado.metadata(request, scope, _uid(study))

    @router.get("/studies/{study}/series/{series}/metadata")
    def series_metadata(study: str, series: str, request: Request, scope: AccessScope = guard) -> Response:
        return wado.metadata(request, scope, _uid(study), _uid(series))

    @router.get("/studies/{study}/series/{series}/instances/{sop}/metadata")
    def instance_metadata(study: str, series: str, sop: str, request: Request, scope: AccessScope = guard) -> Response:
        return wado.metadata(request, scope, _uid(study), _uid(series), _uid(sop))

    return router


def _uid(value: str) -> str:
    return checked_uid(value, "UID in the path")


def _dir(folder: Path | None) -> str | None:
    """Spill transcoded parts to the data folder, never to /tmp (often RAM-backed tmpfs)."""
    return str(folder) if folder is not None else None
