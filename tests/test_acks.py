"""The PutMedia ACK parser: incremental, split-proof, never raises."""

from __future__ import annotations

import json

from hypothesis import given, settings, strategies as st

from kvs_edge.kvs.acks import Ack, AckParseError, AckParser

REAL = (b'{"EventType":"BUFFERING","FragmentTimecode":1700000000000,'
        b'"FragmentNumber":"91343852333181442301154137053453109232642451704"}\n'
        b'{"EventType":"RECEIVED","FragmentTimecode":1700000000000,'
        b'"FragmentNumber":"91343852333181442301154137053453109232642451704"}\n'
        b'{"EventType":"PERSISTED","FragmentTimecode":1700000000000,'
        b'"FragmentNumber":"91343852333181442301154137053453109232642451704"}\n'
        b'{"EventType":"ERROR","FragmentTimecode":0,"FragmentNumber":"9134",'
        b'"ErrorCode":"FRAGMENT_TIMECODE_LESSER_THAN_PREVIOUS","ErrorId":4004}\n'
        b'{"EventType":"IDLE"}\n')


def feed_all(chunks):
    p = AckParser()
    out = []
    for c in chunks:
        out += p.feed(c)
    return out + p.close()


def test_documented_examples_in_one_read():
    acks = feed_all([REAL])
    assert [a.event_type for a in acks] == ["BUFFERING", "RECEIVED", "PERSISTED", "ERROR", "IDLE"]
    assert acks[0] == Ack("BUFFERING", 1700000000000, "91343852333181442301154137053453109232642451704")
    assert acks[3].error_id == 4004 and acks[3].error_code == "FRAGMENT_TIMECODE_LESSER_THAN_PREVIOUS"
    assert acks[3].fragment_timecode == 0
    assert acks[4] == Ack("IDLE")


def test_byte_by_byte_gives_each_ack_as_soon_as_it_closes():
    p = AckParser()
    seen = []
    for i in range(len(REAL)):
        got = p.feed(REAL[i:i + 1])
        if got:
            # an ACK is emitted exactly when its closing brace arrives, before any newline
            assert REAL[i:i + 1] == b"}"
            seen += got
    assert [a.event_type for a in seen] == ["BUFFERING", "RECEIVED", "PERSISTED", "ERROR", "IDLE"]


def test_blank_lines_keepalive_whitespace_crlf_and_no_separator():
    data = b"\r\n\n   \t" + b'{"EventType":"IDLE"}' + b"\r\n \n" + b'{"EventType":"IDLE"}{"EventType":"BUFFERING","FragmentTimecode":5}'
    assert feed_all([data]) == [Ack("IDLE"), Ack("IDLE"), Ack("BUFFERING", 5)]


def test_braces_and_escapes_inside_strings():
    obj = {"EventType": "ERROR", "FragmentTimecode": -1, "FragmentNumber": "",
           "ErrorCode": 'bad } { "quoted" \\ back\\slash }', "ErrorId": 4006}
    raw = json.dumps(obj).encode()
    for split in range(len(raw)):
        assert feed_all([raw[:split], raw[split:]]) == [
            Ack("ERROR", -1, "", 4006, 'bad } { "quoted" \\ back\\slash }')]


def test_numbers_as_strings_are_accepted():
    assert feed_all([b'{"EventType":"ERROR","FragmentTimecode":"17","ErrorId":"5000"}']) == [
        Ack("ERROR", 17, None, 5000, None)]


def test_nonsense_is_an_error_event_and_parsing_recovers():
    data = (b"HTTP garbage here\n" + b'{"EventType":"IDLE"}\n' + b"{not json}\n" + b"[1,2]\n" + b'{"NoType":1}\n'
            + b'{"EventType":"PERSISTED","FragmentTimecode":true}\n' + b"}\n" + b'{"EventType":"RECEIVED","FragmentTimecode":9}\n')
    out = feed_all([data])
    kinds = [type(e).__name__ for e in out]
    assert kinds == ["AckParseError", "Ack", "AckParseError", "AckParseError", "AckParseError", "AckParseError",
                     "AckParseError", "Ack"]
    assert out[1] == Ack("IDLE") and out[7] == Ack("RECEIVED", 9)
    assert "HTTP garbage" in out[0].message
    assert all("\n" not in e.message for e in out if isinstance(e, AckParseError))


def test_invalid_utf8_and_oversized_objects():
    p = AckParser(max_ack_bytes=200)
    out = p.feed(b'{"EventType":"\xff\xfe"}\n' + b'{"EventType":"' + b"x" * 500 + b'"}\n' + b'{"EventType":"IDLE"}\n')
    assert [type(e).__name__ for e in out] == ["AckParseError", "AckParseError", "Ack"]
    assert "longer than 200" in out[1].message
    assert out[2] == Ack("IDLE")


def test_memory_stays_bounded_on_an_endless_object():
    p = AckParser(max_ack_bytes=1000)
    errors = []
    for _ in range(200):
        errors += p.feed(b'{"a":"' + b"y" * 997)
        assert len(p._buf) <= 2000
    assert errors and all(isinstance(e, AckParseError) for e in errors)


def test_truncated_stream_reports_on_close():
    p = AckParser()
    assert p.feed(b'{"EventType":"PERS') == []
    out = p.close()
    assert len(out) == 1 and isinstance(out[0], AckParseError)


acks_st = st.builds(
    Ack,
    event_type=st.sampled_from(["BUFFERING", "RECEIVED", "PERSISTED", "ERROR", "IDLE", "SOMETHING_NEW"]),
    fragment_timecode=st.one_of(st.none(), st.integers(-1, 2**53)),
    fragment_number=st.one_of(st.none(), st.text(max_size=50)),
    error_id=st.one_of(st.none(), st.integers(0, 9999)),
    error_code=st.one_of(st.none(), st.text(max_size=40)),
)
sep_st = st.sampled_from(["\n", "\r\n", "\n\n", " \n\t", "", "\n   \n"])


def encode(ack: Ack) -> dict:
    d = {"EventType": ack.event_type}
    for key, v in (("FragmentTimecode", ack.fragment_timecode), ("FragmentNumber", ack.fragment_number),
                   ("ErrorId", ack.error_id), ("ErrorCode", ack.error_code)):
        if v is not None:
            d[key] = v
    return d


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(acks_st, sep_st), max_size=12), st.data(), st.booleans())
def test_any_split_of_any_ack_sequence_gives_the_same_acks(pairs, data, ascii_only):
    stream = "".join(json.dumps(encode(a), ensure_ascii=ascii_only) + sep for a, sep in pairs).encode()
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=20)))
    chunks = [stream[i:j] for i, j in zip([0] + cuts, cuts + [len(stream)])]
    assert feed_all(chunks) == [a for a, _ in pairs]


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400), st.data())
def test_arbitrary_bytes_never_raise_and_splits_do_not_matter(blob, data):
    cuts = sorted(data.draw(st.lists(st.integers(0, len(blob)), max_size=10)))
    chunks = [blob[i:j] for i, j in zip([0] + cuts, cuts + [len(blob)])]
    whole = feed_all([blob])
    assert feed_all(chunks) == whole
    assert all(isinstance(e, (Ack, AckParseError)) for e in whole)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=100).filter(lambda b: b"{" not in b and b"\n" not in b), acks_st, st.data())
def test_a_valid_ack_after_junk_and_a_newline_is_recovered(junk, ack, data):
    stream = junk + b"\n" + json.dumps(encode(ack)).encode() + b"\n"
    cut = data.draw(st.integers(0, len(stream)))
    out = feed_all([stream[:cut], stream[cut:]])
    assert out[-1] == ack
    assert all(isinstance(e, AckParseError) for e in out[:-1])
    assert len(out) == (2 if junk.strip(b" \t\r") else 1)
