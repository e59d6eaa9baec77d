"""WADO-RS frames, bulk data, rendered images and thumbnails (PS3.18 §8.3.5, §9.5, §10.4).

Frames are cut out of the instance file with the frame index (`store/frames.py`), computed once
per instance and kept beside it as `<sop>.frames.json`: a frame of a 550 MB tomosynthesis
instance costs one seek and one read, whatever the frame number.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import StreamingResponse
from pydicom import dcmread
from pydicom.dataelem import RawDataElement
from pydicom.uid import DeflatedExplicitVRLittleEndian

from drimbox.dicomweb import multipart
from drimbox.dicomweb.accept import MediaRange, NotAcceptable, parse_accept
from drimbox.dicomweb.access import AccessScope
from drimbox.dicomweb.problems import Problem
from drimbox.dicomweb.wado import Wado
from drimbox.errors import DrimboxError
from drimbox.index.repository import HeldInstance
from drimbox.store import frames as frame_store
from drimbox.store import metadata, pixels
from drimbox.store.files import read_deflated
from drimbox.store.frames import FrameIndex
from drimbox.uids import checked_uid

OCTET = "application/octet-stream"
EXPLICIT_VR_LE = "1.2.840.10008.1.2.1"
_MEDIA_OF_SYNTAX = {
    "1.2.840.10008.1.2.4.50": "image/jpeg",
    "1.2.840.10008.1.2.4.51": "image/jpeg",
    "1.2.840.10008.1.2.4.57": "image/jpeg",
    "1.2.840.10008.1.2.4.70": "image/jpeg",
    "1.2.840.10008.1.2.4.80": "image/jls",
    "1.2.840.10008.1.2.4.81": "image/jls",
    "1.2.840.10008.1.2.4.90": "image/jp2",
    "1.2.840.10008.1.2.4.91": "image/jp2",
    "1.2.840.10008.1.2.4.92": "image/jpx",
    "1.2.840.10008.1.2.4.93": "image/jpx",
    "1.2.840.10008.1.2.4.201": "image/jphc",
    "1.2.840.10008.1.2.4.202": "image/jphc",
    "1.2.840.10008.1.2.4.203": "image/jphc",
    "1.2.840.10008.1.2.5": "image/dicom-rle",
}
_MAX_FRAMES_PER_REQUEST = 10_000
_MAX_VIEWPORT = 8192


def frame_index_of(held: HeldInstance, work: Path | None) -> FrameIndex:
    """The instance's frame index (computed once, kept beside it), or 404 without pixel data."""
    index = frame_store.cached_frame_index(Path(held.path), work)
    if index is None:
        raise Problem(404, "this instance has no pixel data")
    return index


class PixelTranscoder:
    """Lossless transcoding with pydicom's codec plugins (`store/pixels.py`), for WADO-RS retrieve."""

    def __init__(self, work: Path | None) -> None:
        self.work = work

    def can(self, held: HeldInstance, target: str) -> bool:
        try:
            index: FrameIndex | None = frame_index_of(held, self.work)
        except Problem:
            index = None  # no pixel data: only the encoding of the data set changes
        except (DrimboxError, OSError):
            return False  # frames we cannot address (video, big endian...): as stored only
        return pixels.can_transcode_frames(index, held.transfer_syntax_uid, target)

    def write(self, path: Path, target: str, out: BinaryIO) -> None:
        pixels.transcode(path, target, out, spool_dir=self.work)


def frame_media(index: FrameIndex, ranges: list[MediaRange]) -> tuple[str, str]:
    """The part media type and transfer syntax frames are sent in (stored form only).

    Native frames go as application/octet-stream (Explicit VR Little Endian); compressed ones in
    their own image media type, or as octet-stream when the client asks for `transfer-syntax=*`.
    """
    stored = index.transfer_syntax_uid
    media = _MEDIA_OF_SYNTAX.get(stored, OCTET) if index.encapsulated else OCTET
    syntax = stored if index.encapsulated else EXPLICIT_VR_LE
    for wanted in ranges:
        if wanted.q <= 0:
            continue
        kind = wanted.part_type if wanted.media_type == "multipart/related" else wanted.media_type
        kind = kind or OCTET
        asked = wanted.transfer_syntax
        if kind in ("*/*", "multipart/*") or (kind == "image/*" and media != OCTET):
            return media, syntax
        if kind == media and asked in (None, "*", syntax):
            return media, syntax
        if kind == OCTET and asked == "*":
            return OCTET, syntax
    raise NotAcceptable(
        f"frames of this instance are stored as {media} ({stored}); the request accepts neither that nor */*"
    )


def frames_router(wado: Wado, authorize: Callable[..., AccessScope]) -> APIRouter:
    router = APIRouter()
    guard = Depends(authorize)
    instance_path = "/studies/{study}/series/{series}/instances/{sop}"

    @router.get(instance_path + "/frames/{numbers}", response_class=StreamingResponse)
    def frames(
        study: str, series: str, sop: str, numbers: str, request: Request, scope: AccessScope = guard
    ) -> Response:
        held = _instance(wado, scope, study, series, sop)
        wanted = frame_store.parse_frame_numbers(numbers)
        if len(wanted) > _MAX_FRAMES_PER_REQUEST:
            raise Problem(400, f"at most {_MAX_FRAMES_PER_REQUEST} frames per request")
        index = frame_index_of(held, wado.work_folder)
        for number in wanted:
            frame_store.frame_ranges(index, number)  # 404 before anything is sent
        media, syntax = frame_media(index, parse_accept(request.headers.get("accept")))
        boundary = multipart.new_boundary()
        path = Path(held.path)
        wado.cache.served([held.sop_uid])

        def body() -> Iterator[bytes]:
            with wado.cache.pinned(held.sop_uid, held.path):
                yield from frame_parts()

        def frame_parts() -> Iterator[bytes]:
            base = f"{wado.public_prefix}/studies/{study}/series/{series}/instances/{sop}/frames"
            for number in wanted:
                location = f"{base}/{number}"
                if index.bits_allocated == 1 and not index.encapsulated:  # bit-packed: small, realigned
                    data = frame_store.read_frame(path, index, number)
                    yield from multipart.bytes_part(boundary, media, data, transfer_syntax=syntax, location=location)
                    continue
                length = sum(size for _, size in frame_store.frame_ranges(index, number))
                yield multipart.part_header(boundary, media, length, transfer_syntax=syntax, location=location)
                yield from frame_store.iter_frame_chunks(path, index, number)
                yield b"\r\n"
            yield multipart.closing(boundary)

        return StreamingResponse(body(), headers={"Content-Type": multipart.content_type(boundary, media)})

    @router.get(instance_path + "/bulkdata/{tag}", response_class=StreamingResponse)
    def bulkdata(study: str, series: str, sop: str, tag: str, scope: AccessScope = guard) -> Response:
        held = _instance(wado, scope, study, series, sop)
        if len(tag) != 8 or not all(c in "0123456789ABCDEFabcdef" for c in tag):
            raise Problem(400, "a bulk data tag is 8 hexadecimal digits, e.g. 7FE00010")
        value = _bulk_value(Path(held.path), int(tag, 16), held.transfer_syntax_uid)
        boundary = multipart.new_boundary()

        def body() -> Iterator[bytes]:
            if isinstance(value, bytes):
                yield from multipart.bytes_part(boundary, OCTET, value)
            else:
                offset, length = value
                with open(held.path, "rb") as handle:
                    handle.seek(offset)
                    yield multipart.part_header(boundary, OCTET, length)
                    yield from multipart.file_chunks(handle, length)
                    yield b"\r\n"
            yield multipart.closing(boundary)

        return StreamingResponse(body(), headers={"Content-Type": multipart.content_type(boundary, OCTET)})

    @router.get(instance_path + "/rendered")
    def rendered(study: str, series: str, sop: str, request: Request, scope: AccessScope = guard) -> Response:
        return _rendered(wado, request, _instance(wado, scope, study, series, sop), 1)

    @router.get(instance_path + "/frames/{number}/rendered")
    def rendered_frame(study: str, series: str, sop: str, number: str, request: Request,
                       scope: AccessScope = guard) -> Response:  # fmt: skip
        numbers = frame_store.parse_frame_numbers(number)
        if len(numbers) != 1:
            raise Problem(400, "a rendered frame is one frame number")
        return _rendered(wado, request, _instance(wado, scope, study, series, sop), numbers[0])

    @router.get(instance_path + "/thumbnail")
    def thumbnail(study: str, series: str, sop: str, request: Request, scope: AccessScope = guard) -> Response:
        held = _instance(wado, scope, study, series, sop)
        return _thumbnail(wado, request, held)

    @router.get("/studies/{study}/series/{series}/thumbnail")
    def series_thumbnail(study: str, series: str, request: Request, scope: AccessScope = guard) -> Response:
        return _thumbnail(wado, request, _representative(wado, scope, study, series))

    @router.get("/studies/{study}/thumbnail")
    def study_thumbnail(study: str, request: Request, scope: AccessScope = guard) -> Response:
        return _thumbnail(wado, request, _representative(wado, scope, study, None))

    return router


def _instance(wado: Wado, scope: AccessScope, study: str, series: str, sop: str) -> HeldInstance:
    for value, name in ((study, "study"), (series, "series"), (sop, "SOP instance")):
        checked_uid(value, f"{name} UID in the path")
    held = next(wado.instances(study, series, sop), None)
    if held is None:
        raise Problem(502, "the PACS did not deliver the instance; retry later")
    return held


def _representative(wado: Wado, scope: AccessScope, study: str, series: str | None) -> HeldInstance:
    """The middle instance of the first series we can get: what a thumbnail of many shows."""
    checked_uid(study, "study UID in the path")
    if series is not None:
        checked_uid(series, "series UID in the path")
    held = wado.index.held(study, series)
    if held:
        return held[len(held) // 2]
    first = next(wado.instances(study, series), None)
    if first is None:
        raise Problem(502, "the PACS did not deliver the instances; retry later")
    return first


def _bulk_value(path: Path, tag: int, syntax: str) -> tuple[int, int] | bytes:
    """Where a bulk value lies in the file (offset, length): only values the metadata gave a
    BulkDataURI for (too large to inline, so left unread by the header parse). In a deflated
    data set (`syntax`, as indexed) the value itself, inflated (the store admits those only up
    to files.DEFLATED_MAX)."""
    # (positions in a deflated file are the inflated stream's: every value read)
    inflated = read_deflated(path) if syntax == DeflatedExplicitVRLittleEndian else None
    deflated = inflated is not None
    ds = inflated if inflated is not None else dcmread(path, defer_size=metadata.BULK_THRESHOLD)
    raw = ds.get_item(tag, keep_deferred=True) if tag in ds else None
    if not isinstance(raw, RawDataElement) or raw.length == 0xFFFFFFFF:
        raise Problem(404, "no such bulk data in this instance (encapsulated pixel data: ask for frames)")
    if deflated and isinstance(raw.value, bytes) and raw.length > metadata.BULK_THRESHOLD:
        return raw.value
    if deflated or raw.value is not None:
        raise Problem(404, "no such bulk data in this instance (a value short enough is in the metadata)")
    return raw.value_tell, raw.length


def _rendered_media(request: Request) -> str:
    for wanted in parse_accept(request.headers.get("accept")):
        if wanted.q <= 0:
            continue
        if wanted.media_type in ("image/jpeg", "image/*", "*/*"):
            return "image/jpeg"
        if wanted.media_type == "image/png":
            return "image/png"
    raise NotAcceptable("rendered images are image/jpeg or image/png")


def _rendered(wado: Wado, request: Request, held: HeldInstance, frame: int) -> Response:
    media = _rendered_media(request)
    params = request.query_params
    window = _numbers(params.get("window"), "window", 2, 3)
    viewport = _numbers(params.get("viewport"), "viewport", 2, 2)
    quality = int(_numbers(params.get("quality"), "quality", 1, 1)[0]) if "quality" in params else 90
    if not 1 <= quality <= 100:
        raise Problem(400, "quality is between 1 and 100")
    index = frame_index_of(held, wado.work_folder)
    frame_store.frame_ranges(index, frame)
    image = pixels.render(Path(held.path), index, frame, media, _window(params.get("window"), window),
                          _viewport(viewport), quality)  # fmt: skip
    return Response(image, media_type=media, headers={"Cache-Control": "private, max-age=3600"})


def _thumbnail(wado: Wado, request: Request, held: HeldInstance) -> Response:
    media = _rendered_media(request)
    viewport = _viewport(_numbers(request.query_params.get("viewport"), "viewport", 2, 2)) or (128, 128)
    image = pixels.thumbnail(Path(held.path), frame_index_of(held, wado.work_folder), media, viewport)
    return Response(image, media_type=media, headers={"Cache-Control": "private, max-age=3600"})


def _numbers(text: str | None, name: str, least: int, most: int) -> list[float]:
    if text is None:
        return []
    parts = text.split(",")
    try:
        values = [float(p) for p in parts[:2]] + ([] if len(parts) < 3 else [0.0])
    except ValueError:
        raise Problem(400, f"{name}={text[:40]!r}: expected {least} comma-separated numbers") from None
    if not least <= len(parts) <= most or any(v != v or abs(v) > 1e9 for v in values):
        raise Problem(400, f"{name}={text[:40]!r}: expected {least} comma-separated numbers")
    return values


def _window(text: str | None, values: list[float]) -> pixels.Window | None:
    if not values or text is None:
        return None
    center, width = values[0], values[1]
    function = text.split(",")[2].strip().upper().replace("-", "_") if text.count(",") == 2 else "LINEAR"
    if function not in ("LINEAR", "LINEAR_EXACT", "SIGMOID") or width <= 0:
        raise Problem(400, "window is center,width[,function]: width > 0, function linear, linear-exact or sigmoid")
    return (center, width, function)


def _viewport(values: list[float]) -> tuple[int, int] | None:
    if not values:
        return None
    width, height = int(values[0]), int(values[1])
    if not (1 <= width <= _MAX_VIEWPORT and 1 <= height <= _MAX_VIEWPORT):
        raise Problem(400, f"viewport is width,height between 1 and {_MAX_VIEWPORT}")
    return width, height
