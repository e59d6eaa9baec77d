"""Accept headers of WADO-RS requests (PS3.18 §8.7.3), including the DRIM-M form, and the choice of syntax."""

from __future__ import annotations

from pathlib import Path

import pytest

from drimbox.dicomweb.accept import (
    EXPLICIT_VR_LE,
    BadAccept,
    NotAcceptable,
    accepts_json,
    dicom_syntaxes,
    parse_accept,
)

FIXTURES = Path(__file__).parents[1] / "fixtures" / "drim-m-data"
JPEG_LS = "1.2.840.10008.1.2.4.80"
J2K_LOSSLESS = "1.2.840.10008.1.2.4.90"
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"


def _accept_of(sample: str) -> str:
    for line in (FIXTURES / sample).read_text(encoding="utf-8").splitlines():
        if line.lower().startswith("accept:"):
            return line.split(":", 1)[1]
    raise AssertionError(f"no Accept line in {sample}")


@pytest.mark.parametrize("sample", ["wado-rs-request-instance.txt", "wado-rs-request-series.txt",
                                    "wado-rs-request-study.txt"])  # fmt: skip
def test_drim_m_samples_parse_in_q_order(sample: str) -> None:
    ranges = parse_accept(_accept_of(sample))
    assert len(ranges) == 10 and all(r.params.get("boundary") == "**" for r in ranges)
    choice = dicom_syntaxes(ranges)
    assert choice.preferred[-1] == EXPLICIT_VR_LE and not choice.any_syntax
    never = lambda stored, target: False  # noqa: E731
    assert choice.for_instance(EXPLICIT_VR_LE, never, transcode=False) == EXPLICIT_VR_LE
    assert choice.for_instance(JPEG_LS, never, transcode=False) == JPEG_LS
    # Strict q-values: the most preferred syntax that can be produced wins.
    only_jpeg_ls = lambda stored, target: target == JPEG_LS  # noqa: E731
    assert choice.for_instance(EXPLICIT_VR_LE, only_jpeg_ls, transcode=True) == JPEG_LS


def test_series_sample_prefers_jpeg_lossless_first() -> None:
    choice = dicom_syntaxes(parse_accept(_accept_of("wado-rs-request-series.txt")))
    assert choice.preferred[:2] == ("1.2.840.10008.1.2.4.70", JPEG_LS)


def test_never_lossy_when_lossless_is_accepted() -> None:
    accept = (f'multipart/related; type="application/dicom"; transfer-syntax={JPEG_BASELINE}; q=0.9, '
              f'multipart/related; type="application/dicom"; transfer-syntax={J2K_LOSSLESS}; q=0.5')  # fmt: skip
    choice = dicom_syntaxes(parse_accept(accept))
    anything = lambda stored, target: True  # noqa: E731
    assert choice.for_instance(EXPLICIT_VR_LE, anything, transcode=True) == J2K_LOSSLESS
    only_lossy = dicom_syntaxes(
        parse_accept(f'multipart/related; type="application/dicom"; transfer-syntax={JPEG_BASELINE}')
    )
    assert only_lossy.for_instance(EXPLICIT_VR_LE, anything, transcode=True) == JPEG_BASELINE


@pytest.mark.parametrize(
    "accept",
    [None, "*/*", 'multipart/related; type="*/*"', 'multipart/related; type="application/dicom"; transfer-syntax=*'],
)
def test_as_stored(accept: str | None) -> None:
    choice = dicom_syntaxes(parse_accept(accept))
    assert choice.any_syntax
    assert choice.for_instance(JPEG_LS, lambda s, t: False, transcode=True) == JPEG_LS


def test_default_syntax_of_application_dicom_is_explicit_little_endian() -> None:
    choice = dicom_syntaxes(parse_accept('multipart/related; type="application/dicom"'))
    assert choice.preferred == (EXPLICIT_VR_LE,)
    with pytest.raises(NotAcceptable):
        choice.for_instance(JPEG_LS, lambda s, t: False, transcode=False)


@pytest.mark.parametrize(
    "accept",
    ["multipart/related; q=2", "multipart/related; q=abc", "not a type", 'multipart/related; type="unbalanced',
     "multipart/related; transfer-syntax=1.2.x", "multipart/related; =x", "a/b," * 100, "x" * 20_000],
)  # fmt: skip
def test_malformed_accept_is_a_clear_400(accept: str) -> None:
    with pytest.raises(BadAccept):
        parse_accept(accept)


def test_q_zero_and_foreign_types_are_not_acceptable() -> None:
    with pytest.raises(NotAcceptable):
        dicom_syntaxes(parse_accept('multipart/related; type="application/dicom"; q=0, image/png'))
    assert accepts_json(parse_accept("application/dicom+json"))
    assert not accepts_json(parse_accept("application/dicom+json; q=0, image/png"))


@pytest.mark.parametrize(
    "accept",
    [
        'multipart/related; type="application/dicom"; transfer-syntax=*',
        'multipart/related; type="application/dicom"',
        f'multipart/related; type="application/dicom"; transfer-syntax={JPEG_LS}',
        f'multipart/related; type="application/dicom"; transfer-syntax={J2K_LOSSLESS}, '
        f'multipart/related; type="application/dicom"; transfer-syntax={EXPLICIT_VR_LE}; q=0.5',
        f'multipart/related; type="application/dicom"; transfer-syntax={JPEG_BASELINE}',
        _accept_of("wado-rs-request-study.txt"),
        f'multipart/related; type="application/dicom"; transfer-syntax={JPEG_BASELINE}, '
        f'multipart/related; type="application/dicom"; transfer-syntax={EXPLICIT_VR_LE}; q=0.5',
    ],
)
@pytest.mark.parametrize("stored", [EXPLICIT_VR_LE, JPEG_LS, J2K_LOSSLESS, JPEG_BASELINE])
@pytest.mark.parametrize("transcode", [False, True])
def test_sends_as_stored_agrees_with_the_choice_whatever_can_be_transcoded(
    accept: str, stored: str, transcode: bool
) -> None:
    """The check WADO-RS makes before its response starts, without reading any file."""
    choice = dicom_syntaxes(parse_accept(accept))

    def chosen(can: bool) -> str | None:
        try:
            return choice.for_instance(stored, lambda s, t: can, transcode=transcode)
        except NotAcceptable:
            return None

    if choice.sends_as_stored(stored, transcode=transcode):
        assert chosen(False) == chosen(True) == stored
    else:
        assert chosen(True) != stored, "not sent as stored when anything can be transcoded"
