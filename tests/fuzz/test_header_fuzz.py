"""What a DICOMweb client controls before any route code runs: the Accept, Authorization and
KOS-SOPInstanceUID headers and the QIDO-RS query parameters. Each parser answers a value or its
documented error (the 400/401/406 the problem handlers map), whatever the text.

Header values are drawn as HTTP delivers them: latin-1 text, with the separators each grammar uses.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from drimbox.auth.cache import MAX_TOKEN_BYTES, check_bearer_syntax
from drimbox.bearer import bearer_token
from drimbox.dicomweb.accept import (
    LOSSY,
    BadAccept,
    NotAcceptable,
    accepts_json,
    dicom_syntaxes,
    parse_accept,
)
from drimbox.dicomweb.qido import DICOM_JSON, QueryError, negotiate, parse_search
from drimbox.errors import InvalidUID, TokenRejected
from drimbox.index.queries import MATCHABLE
from drimbox.uids import checked_uid, is_valid_uid
from tests.fuzz.damage import budget

LATIN1 = st.characters(max_codepoint=255)
SYNTAXES = ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2", "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.90", "*",
            "1.2.840.10008.1.2.4.201", "", "1..2", "01.2", "1.2.", "abc", "*/*"]  # fmt: skip
MEDIA = ["multipart/related", "application/dicom", "application/dicom+json", "application/json", "*/*",
         "multipart/*", "image/jpeg", "image/png", "application/*", "text/html", "", "/", "a/b/c", "x"]  # fmt: skip
PARAMS = st.sampled_from(["type", "transfer-syntax", "q", "boundary", "charset", "", "Q", "TRANSFER-SYNTAX"])
VALUES = st.sampled_from(['"application/dicom"', "application/dicom", '"*/*"', "**", "1", "0", "0.5", "1.0001",
                          "-0", "nan", "inf", "1e-3", "", '"', '""', '"a,b"', '"a;b"', *SYNTAXES])  # fmt: skip


@st.composite
def accept_headers(draw: st.DrawFn) -> str:
    """Accept values in the PS3.18 grammar, with the mistakes clients make (and some noise)."""
    ranges = []
    for _ in range(draw(st.integers(0, 12))):
        params = [f"{draw(PARAMS)}{draw(st.sampled_from(['=', '=', ' = ', '']))}{draw(VALUES)}"
                  for _ in range(draw(st.integers(0, 4)))]  # fmt: skip
        ranges.append(";".join([draw(st.sampled_from(MEDIA)), *params]))
    text = draw(st.sampled_from([",", ", ", " ,"])).join(ranges)
    if draw(st.integers(0, 3)) == 0:
        at = draw(st.integers(0, len(text)))
        text = text[:at] + draw(st.text(LATIN1, max_size=8)) + text[at:]
    return text


@budget(600)
@given(accept_headers() | st.text(LATIN1, max_size=200) | st.just("a/b," * 70) | st.just("*/*;q=1" + " " * 17_000))
def test_accept_headers_parse_or_are_bad(header: str) -> None:
    try:
        ranges = parse_accept(header)
    except BadAccept as bad:
        assert str(bad)
        return
    assert ranges and all(0.0 <= media.q <= 1.0 for media in ranges)
    assert [media.q for media in ranges] == sorted((media.q for media in ranges), reverse=True)
    accepts_json(ranges)
    try:
        choice = dicom_syntaxes(ranges)
    except NotAcceptable:
        return
    for stored in ("1.2.840.10008.1.2.1", "1.2.840.10008.1.2.4.50"):
        try:
            chosen = choice.for_instance(stored, lambda source, target: target != "1.2.840.10008.1.2.4.201",
                                         transcode=True)  # fmt: skip
        except NotAcceptable:
            continue
        assert chosen == stored or chosen in choice.preferred
        assert not (chosen in LOSSY and stored not in LOSSY and choice.lossless_accepted)


@budget(500)
@given(accept_headers() | st.text(LATIN1, max_size=100))
def test_qido_media_negotiation_never_fails(header: str) -> None:
    assert negotiate(header) in (DICOM_JSON, "application/json", None)


TOKEN_TEXT = st.text(st.sampled_from("AZaz09-._~+/= \t\"'\\,:é\x00"), max_size=60)


@budget(500)
@given(
    st.one_of(
        st.none(),
        st.text(LATIN1, max_size=80),
        st.tuples(st.sampled_from(["Bearer", "bearer", "BEARER", "Basic", "Bearer ", " Bearer", "Bearer\t", ""]),
                  st.sampled_from([" ", "  ", "\t", ""]), TOKEN_TEXT).map("".join),
        st.just("Bearer " + "a" * (MAX_TOKEN_BYTES + 1)),
    )
)  # fmt: skip
def test_authorization_headers_give_a_token_or_401(header: str | None) -> None:
    try:
        token = check_bearer_syntax(bearer_token(header))
    except TokenRejected as rejected:
        assert str(rejected)
        return
    assert token and token == token.strip() and len(token) <= MAX_TOKEN_BYTES
    assert header is not None and token in header


UID_TEXT = st.text(st.sampled_from("0123456789.. \x00a-"), max_size=70)


@budget(500)
@given(st.one_of(UID_TEXT, st.text(LATIN1, max_size=70), st.none(), st.integers(), st.just("1." * 40 + "1")))
def test_kos_header_and_path_uids_are_checked(value: object) -> None:
    try:
        uid = checked_uid(value, "KOS-SOPInstanceUID")
    except InvalidUID as invalid:
        assert str(invalid) and isinstance(invalid, ValueError)
        return
    assert is_valid_uid(uid) and isinstance(value, str) and uid in value


NAMES = st.sampled_from([*MATCHABLE, "includefield", "limit", "offset", "fuzzymatching", "accept", "charset",
                         "00100010", "0020000D", "00080060", "7FE00010", "FFFFFFFF", "00000000", "PixelData",
                         "ReferencedSeriesSequence.SeriesInstanceUID", "patientname", "", "all"])  # fmt: skip
PARAMETER_VALUES = st.one_of(
    st.sampled_from(["", "*", "?", "DUP*", "20260101-", "-20261231", "20260101-20261231", "2026", "abc-def", "-",
                     "1.2.3", "1.2.3,1.2.4", "1.2.3\\1.2.4", "1..2", "CT\\MR", "CT,MR", "12", "-1", "0", "1e3",
                     "99999999999999", "true", "FALSE", "all", "PatientName,StudyDate", "00100010", "nope", "101500",
                     "1015-1230", "25", "999999", "%", "_", "'", "\\", "^", "=", "x" * 1000]),
    st.text(LATIN1, max_size=30),
)  # fmt: skip


@budget(800)
@given(
    st.lists(st.tuples(NAMES | st.text(LATIN1, max_size=12), PARAMETER_VALUES), max_size=8),
    st.sampled_from(["study", "series", "instance"]),
    st.sampled_from([None, "1.2.3", "1.2.3.4"]),
)
def test_qido_parameters_give_a_search_or_400(params: list[tuple[str, str]], level: str, study: str | None) -> None:
    try:
        search = parse_search(params, level=level, study_uid=study, default_limit=100, max_limit=500)  # type: ignore[arg-type]
    except QueryError as bad:
        assert str(bad)
        return
    assert search.query.level == level and search.query.limit is not None and 1 <= search.query.limit <= 500
