"""The server-sent-events parser: events survive any chunking, CRLF line ends, multi-line data, comments."""

from __future__ import annotations

from hypothesis import example, given
from hypothesis import strategies as st

from copilot.sources.sse import ServerSentEvent, parse_events


def parse(*chunks: bytes) -> list[ServerSentEvent]:
    return list(parse_events(chunks))


def test_single_event() -> None:
    assert parse(b"id: 0\nevent: desired_lrp_created\ndata: AAEC\n\n") == [ServerSentEvent("0", "desired_lrp_created", "AAEC")]


def test_crlf_line_ends() -> None:
    assert parse(b"id: 1\r\nevent: x\r\ndata: abc\r\n\r\nid: 2\r\nevent: y\r\ndata: def\r\n\r\n") == [
        ServerSentEvent("1", "x", "abc"),
        ServerSentEvent("2", "y", "def"),
    ]


def test_multi_line_data_is_joined_with_newlines() -> None:
    assert parse(b"event: x\ndata: one\ndata: two\ndata:\ndata: four\n\n") == [ServerSentEvent("", "x", "one\ntwo\n\nfour")]


def test_comments_are_ignored() -> None:
    assert parse(b": heartbeat\n\n:another\nevent: x\n: in the middle\ndata: d\n\n") == [ServerSentEvent("", "x", "d")]


def test_only_one_leading_space_is_stripped() -> None:
    assert parse(b"data:  two spaces\nevent:nospace\n\n") == [ServerSentEvent("", "nospace", " two spaces")]


def test_field_without_colon_and_value_with_colons() -> None:
    assert parse(b"data\nevent: a:b: c\n\n") == [ServerSentEvent("", "a:b: c", "")]


def test_blank_lines_between_events_yield_nothing() -> None:
    assert parse(b"\n\n\nevent: x\ndata: 1\n\n\n\n") == [ServerSentEvent("", "x", "1")]


def test_incomplete_trailing_event_is_not_yielded() -> None:
    assert parse(b"event: x\ndata: 1\n\nevent: y\ndata: 2\n") == [ServerSentEvent("", "x", "1")]


def test_events_are_yielded_as_soon_as_complete() -> None:
    stream = parse_events(iter([b"event: x\ndata: 1\n\n", b"event: y\n"]))
    assert next(stream) == ServerSentEvent("", "x", "1")


def test_invalid_utf8_is_replaced_not_fatal() -> None:
    assert parse(b"event: x\ndata: \xff\xfe ok\n\n") == [ServerSentEvent("", "x", "\ufffd\ufffd ok")]


# ---------------------------------------------------------------- any chunking

field_text = st.text(alphabet=st.characters(blacklist_characters="\r\n", blacklist_categories=("Cs",)), max_size=20)
events = st.lists(
    st.tuples(
        st.text(alphabet="0123456789", min_size=1, max_size=5),
        st.text(alphabet="abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=30),
        st.lists(field_text, min_size=1, max_size=3),
    ),
    max_size=8,
)


def encode(items: list[tuple[str, str, list[str]]], newline: bytes, with_comments: bool) -> bytes:
    out = b""
    for event_id, event_type, data_lines in items:
        if with_comments:
            out += b": keep-alive" + newline
        out += b"id: " + event_id.encode() + newline
        out += b"event: " + event_type.encode() + newline
        for line in data_lines:
            out += b"data: " + line.encode() + newline
        out += newline
    return out


@given(events, st.sampled_from([b"\n", b"\r\n"]), st.booleans(), st.lists(st.integers(min_value=0, max_value=5000), max_size=12))
@example([("7", "x", [" leading space", "", "a: b"])], b"\r\n", True, [1, 2, 15, 16, 17, 40])
def test_events_survive_any_chunk_boundaries(items, newline: bytes, with_comments: bool, positions: list[int]) -> None:
    raw = encode(items, newline, with_comments)
    cuts = sorted(p % (len(raw) + 1) for p in positions)
    chunks = [raw[a:b] for a, b in zip([0, *cuts], [*cuts, len(raw)], strict=True)]
    expected = [ServerSentEvent(event_id, event_type, "\n".join(data_lines)) for event_id, event_type, data_lines in items]
    assert list(parse_events(chunks)) == expected


@given(events)
def test_byte_at_a_time(items) -> None:
    raw = encode(items, b"\r\n", True)
    assert list(parse_events(raw[i : i + 1] for i in range(len(raw)))) == list(parse_events([raw]))
