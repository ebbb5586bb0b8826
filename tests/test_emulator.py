"""The KVS emulator over real sockets on loopback: stock clients (requests, botocore) and a full-duplex h11 client
(support/kvs_client.py), SigV4 signed with botocore; archived MKV checked with PyAV."""

from __future__ import annotations

import datetime as dt
import json
import socket
import subprocess
import sys
import time

import av
import botocore.session
import pytest
import requests
from botocore.config import Config

from kvs_edge.emulator import DEFAULT_ACCESS_KEY_ID, DEFAULT_SECRET_ACCESS_KEY, Emulator
from support.h264gen import SDK_DIR
from support.kvs_client import (PutMediaClient, block_count, cluster_timecodes, insert_before_cluster,
                                put_media_headers, put_media_requests, set_block, set_cluster_timecode,
                                split_at_clusters, tags_element)

SDK_FILES = sorted(SDK_DIR.glob("*.mkv"))
REF = (SDK_DIR / "ref.mkv").read_bytes()


def kvs_client(emu: Emulator, **kw):
    session = botocore.session.get_session()
    return session.create_client("kinesisvideo", region_name="us-east-1", endpoint_url=emu.url,
                                 aws_access_key_id=DEFAULT_ACCESS_KEY_ID,
                                 aws_secret_access_key=DEFAULT_SECRET_ACCESS_KEY,
                                 config=Config(retries={"max_attempts": 1}), verify=getattr(emu, "ca_file", None), **kw)


def decode_archive(path) -> list[int]:
    """PTS (ms) of every frame PyAV decodes from an archived session file."""
    with av.open(str(path)) as c:
        return [f.pts for f in c.decode(video=0)]


def wait_for(pred, timeout=5.0):
    end = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.01)


def events(acks):
    return [(a["EventType"], a.get("FragmentTimecode")) for a in acks]


# ------------------------------------------------------------------ accepted: the SDK's streams


@pytest.mark.parametrize("path", SDK_FILES, ids=lambda p: p.name)
def test_sdk_stream_sent_by_requests_is_acknowledged_archived_and_playable(emulator, path):
    data = path.read_bytes()
    emulator.create_stream("cam")
    status, acks, _ = put_media_requests(emulator.url, "cam", data, chunk_size=5000)
    assert status == 200
    tcs = cluster_timecodes(data)
    assert events(acks) == [(e, tc) for tc in tcs for e in ("BUFFERING", "RECEIVED", "PERSISTED")]
    entries = emulator.archive("cam")
    assert [e.producer_ts_ms for e in entries] == tcs
    assert [e.fragment_number for e in entries] == [a["FragmentNumber"] for a in acks if a["EventType"] == "PERSISTED"]
    assert sum(e.frames for e in entries) == block_count(data)
    files = emulator.archive_files("cam")
    assert len(files) == 1
    pts = decode_archive(files[0])
    assert len(pts) == block_count(data)
    assert pts[0] == tcs[0] and pts == sorted(pts)
    st = emulator.stats("cam")
    assert st.connections_total == 1 and st.max_concurrent == 1 and st.error_acks == []


def test_reset_sessions_yield_one_continuous_archive(emulator):
    emulator.create_stream("cam")
    s1 = (SDK_DIR / "reset.session1.mkv").read_bytes()
    c = PutMediaClient(emulator.url, "cam")
    assert c.response() == 200
    c.send(s1)
    c.read_acks(5, until=lambda a: a["EventType"] == "BUFFERING" and a["FragmentTimecode"] == 1700000003000)
    c.abort()  # the connection drops after frame 99: fragment 3000 was never complete
    wait_for(lambda: emulator.stats("cam").active == 0)  # the server noticed (else: ConnectionLimitExceeded)
    status, acks, _ = put_media_requests(emulator.url, "cam", (SDK_DIR / "reset.session2.mkv").read_bytes())
    assert status == 200 and acks[-1]["EventType"] == "PERSISTED"
    entries = emulator.archive("cam")
    assert [e.producer_ts_ms for e in entries] == [1700000000000 + 1000 * i for i in range(6)]
    assert sum(e.frames for e in entries) == 180
    assert len({e.session for e in entries}) == 2
    pts = [p for f in emulator.archive_files("cam") for p in decode_archive(f)]
    assert pts == [1700000000000 + i * 1000 // 30 for i in range(180)]  # every frame once, in order


def test_acks_arrive_while_the_body_is_still_open(emulator):
    emulator.create_stream("cam")
    header, c0, c1, c2, *rest = split_at_clusters(REF)
    with PutMediaClient(emulator.url, "cam") as c:
        assert c.response() == 200  # before any body byte was sent
        c.send(header + c0 + c1[:30])
        got = c.read_acks(5, until=lambda a: a["EventType"] == "PERSISTED")
        assert events(got)[:3] == [("BUFFERING", 1700000000000), ("RECEIVED", 1700000000000),
                                   ("PERSISTED", 1700000000000)]
        assert not c.ended
        c.send(c1[30:] + c2)
        got = c.read_acks(5, until=lambda a: a["EventType"] == "PERSISTED")
        assert ("PERSISTED", 1700000001000) in events(got)
        c.send(b"".join(rest))
        c.finish()
        c.read_until_end()
        assert [a["FragmentTimecode"] for a in c.acks if a["EventType"] == "PERSISTED"] == cluster_timecodes(REF)


def test_each_ack_is_its_own_http_chunk_and_100_continue_comes_first(emulator):
    # The SDK's ACK parser keeps only the first ACK of every chunk it is handed (PIC AckParser.c), so the service
    # sends one per chunk; curl sends "Expect: 100-continue" and waits for the 100 before the body.
    emulator.create_stream("cam")
    with PutMediaClient(emulator.url, "cam", extra_headers={"expect": "100-continue"}) as c:
        assert c.response() == 200 and c.informational == [100]
        c.send(REF)
        c.finish()
        c.read_until_end()
    assert len(c.acks) == 3 * len(cluster_timecodes(REF))
    assert all(ch.count(b"\n") == 1 and ch.endswith(b"\n") and json.loads(ch) for ch in c.chunks), c.chunks[:4]
    assert len(c.chunks) == len(c.acks)
    with PutMediaClient(emulator.url, "cam") as c:  # no Expect header: no 100
        assert c.response() == 200 and c.informational == []


def test_a_fragment_that_cannot_be_archived_gets_error_5001_not_persisted(emulator, caplog):
    arn = emulator.create_stream("cam")
    header, c0, c1, c2, *rest = split_at_clusters(REF)
    with PutMediaClient(emulator.url, "cam") as c:
        c.response()
        c.send(header + c0 + c1[:30])
        c.read_acks(5, until=lambda a: a["EventType"] == "PERSISTED")
        emulator.store.delete(arn)  # the archive is gone under the open session: nothing more can be stored
        c.send(c1[30:] + c2)
        c.read_acks(5, until=lambda a: a["EventType"] == "ERROR")
        c.read_acks(5)
    assert events(c.acks)[-2:] == [("RECEIVED", 1700000001000), ("ERROR", 1700000001000)]
    assert c.acks[-1]["ErrorId"] == 5001 and c.acks[-1]["ErrorCode"] == "ARCHIVAL_ERROR"
    assert c.ended  # an ERROR ends the connection
    assert ("PERSISTED", 1700000001000) not in events(c.acks)
    assert any("cannot archive fragment" in r.getMessage() for r in caplog.records)


def test_tls_putmedia_and_control_plane(tls_emulator):
    client = kvs_client(tls_emulator)
    arn = client.create_stream(StreamName="cam", DataRetentionInHours=2)["StreamARN"]
    assert client.describe_stream(StreamARN=arn)["StreamInfo"]["DataRetentionInHours"] == 2
    assert client.get_data_endpoint(StreamName="cam", APIName="PUT_MEDIA")["DataEndpoint"] == tls_emulator.url
    assert tls_emulator.url.startswith("https://")
    status, acks, _ = put_media_requests(tls_emulator.url, "cam", REF, ca_file=tls_emulator.ca_file)
    assert status == 200 and [a["EventType"] for a in acks].count("PERSISTED") == 6
    with pytest.raises(requests.exceptions.SSLError):  # a client that does not trust the CA
        requests.get(tls_emulator.url + "/archive/cam", timeout=5)


def test_relative_timecodes_over_the_network(emulator):
    emulator.create_stream("cam")
    data = REF
    for i, tc in enumerate(cluster_timecodes(REF)):
        data = set_cluster_timecode(data, i, tc - 1_700_000_000_000)
    status, acks, _ = put_media_requests(emulator.url, "cam", data, timecode_type="RELATIVE",
                                         producer_start=1_700_000_000.0)
    assert status == 200
    assert [e.producer_ts_ms for e in emulator.archive("cam")] == cluster_timecodes(REF)
    assert decode_archive(emulator.archive_files("cam")[0])[0] == 1_700_000_000_000


def test_retention_zero_stream_gets_no_persisted(emulator):
    emulator.create_stream("cam", retention_hours=0)
    status, acks, _ = put_media_requests(emulator.url, "cam", REF)
    assert {a["EventType"] for a in acks} == {"BUFFERING", "RECEIVED"}
    assert emulator.archive("cam") == []


# ------------------------------------------------------------------ rejected: ERROR then the connection closes


def variants():
    return {
        "garbage": (b"\x00\x01 this is not MKV" * 100, 4006),
        "timecodes-going-back": (set_cluster_timecode(REF, 3, 1700000001500), 4004),
        "21-second-fragment": (set_block(REF, 1, 29, rel_timecode=21000), 4002),
        "11-tags": (insert_before_cluster(REF, 2, tags_element([f"T{i}" for i in range(11)])), 4009),
        "undeclared-track": (set_block(REF, 2, 5, track=3), 4010),
        "bad-avcc-lengths": (set_block(REF, 4, 2, first_nal_length=0xFFFFFF), 4006),
    }


@pytest.mark.parametrize("name", list(variants()))
def test_rule_breaking_streams_get_the_error_then_the_connection_closes(emulator, name):
    data, error_id = variants()[name]
    emulator.create_stream("cam")
    with PutMediaClient(emulator.url, "cam") as c:
        assert c.response() == 200
        sent = 0
        try:
            for i in range(0, len(data), 4096):  # keep sending like a producer would, until the server hangs up
                c.send(data[i:i + 4096])
                sent += 1
                c.read_acks(0.01)
                if c.ended:
                    break
        except (BrokenPipeError, ConnectionResetError):
            pass
        c.read_acks(5)
        assert c.ended, "the server must end the response after an ERROR"
        errors = [a for a in c.acks if a["EventType"] == "ERROR"]
        assert len(errors) == 1 and errors[0]["ErrorId"] == error_id
        assert c.acks[-1] == errors[0]  # nothing after the ERROR
    assert emulator.stats("cam").error_acks == [(error_id, errors[0].get("FragmentTimecode"))]


def test_bad_signature_gets_403_and_nothing_is_stored(emulator):
    emulator.create_stream("cam")
    status, _, err = put_media_requests(emulator.url, "cam", REF, secret_access_key="not-the-secret")
    assert status == 403 and "signature" in err["Message"].lower()
    c = PutMediaClient(emulator.url, "cam", access_key_id="AKIAUNKNOWN000000000")
    assert c.response() == 403 and c.error_body["__type"] == "UnrecognizedClientException"
    # a valid signature over other headers than those sent
    headers = put_media_headers(emulator.url, "cam")
    headers["x-amzn-stream-name"] = "other"
    emulator.create_stream("other")
    c = PutMediaClient(emulator.url, "cam", headers=headers)
    assert c.response() == 403
    assert emulator.archive("cam") == [] and emulator.archive("other") == []
    assert DEFAULT_SECRET_ACCESS_KEY not in json.dumps(err)


def test_clock_skew_over_five_minutes_is_signature_expired(emulator):
    emulator.create_stream("cam")
    past = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None) - dt.timedelta(minutes=6)
    c = PutMediaClient(emulator.url, "cam", when=past)
    assert c.response() == 403
    assert c.error_body["Message"].startswith("Signature expired")
    assert c.response_headers["x-amzn-errortype"] == "InvalidSignatureException"
    near = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None) - dt.timedelta(minutes=4)
    assert PutMediaClient(emulator.url, "cam", when=near).response() == 200


def test_unknown_stream_404_and_bad_headers_400(emulator):
    c = PutMediaClient(emulator.url, "nope")
    assert c.response() == 404 and c.error_body["__type"] == "ResourceNotFoundException"
    emulator.create_stream("cam")
    c = PutMediaClient(emulator.url, "cam", timecode_type="SOMETIMES")
    assert c.response() == 400 and c.error_body["__type"] == "InvalidArgumentException"
    c = PutMediaClient(emulator.url, "cam", timecode_type="RELATIVE")  # without a producer start timestamp
    assert c.response() == 400 and "x-amzn-producer-start-timestamp" in c.error_body["Message"]


def test_a_second_concurrent_connection_to_a_stream_gets_connection_limit_exceeded(emulator):
    emulator.create_stream("cam")
    emulator.create_stream("cam2")
    header, c0, *rest = split_at_clusters(REF)
    first = PutMediaClient(emulator.url, "cam")
    assert first.response() == 200
    first.send(header + c0)
    second = PutMediaClient(emulator.url, "cam")
    assert second.response() == 400 and second.error_body["__type"] == "ConnectionLimitExceededException"
    assert PutMediaClient(emulator.url, "cam2").response() == 200  # another stream is fine
    first.send(b"".join(rest))
    first.finish()
    first.read_until_end()
    # once the body ended, the slot is free
    status, _, _ = put_media_requests(emulator.url, "cam", b"")
    assert status == 200
    st = emulator.stats("cam")
    assert st.max_concurrent == 2 and st.connections_total == 3
    assert (400, "ConnectionLimitExceededException") in st.http_errors


# ------------------------------------------------------------------ timers on the wire


def test_idle_acks_and_close_after_idle_timeout(make_emulator):
    emu = make_emulator(idle_timeout_s=1.2, idle_ack_s=0.3)
    emu.create_stream("cam")
    header, c0, *_ = split_at_clusters(REF)
    with PutMediaClient(emu.url, "cam") as c:
        c.response()
        c.send(header + c0)
        got = c.read_acks(5)
        assert c.ended  # closed by the server after 1.2 s of silence
        kinds = [a["EventType"] for a in got]
        assert kinds[0] == "BUFFERING" and kinds.count("IDLE") >= 2 and set(kinds[1:]) == {"IDLE"}


def test_error_4003_at_the_maximum_connection_duration(make_emulator):
    emu = make_emulator(max_connection_s=0.8)
    emu.create_stream("cam")
    header, c0, *_ = split_at_clusters(REF)
    with PutMediaClient(emu.url, "cam") as c:
        c.response()
        c.send(header + c0)
        c.read_acks(5)
        assert c.ended
        assert c.acks[-1]["ErrorId"] == 4003 and c.acks[-1]["ErrorCode"] == "MAX_CONNECTION_DURATION_REACHED"
        assert c.acks[-1]["FragmentTimecode"] == 1700000000000


def test_persisted_after_the_configured_delay(make_emulator):
    emu = make_emulator(persist_delay_s=1.0)
    emu.create_stream("cam")
    header, c0, c1, *rest = split_at_clusters(REF)
    with PutMediaClient(emu.url, "cam") as c:
        c.response()
        c.send(header + c0 + c1[:30])
        c.read_acks(5, until=lambda a: a["EventType"] == "PERSISTED")
        # PERSISTED waits for the delay: the next fragment's BUFFERING (sent at once) comes before it
        assert events(c.acks) == [("BUFFERING", 1700000000000), ("RECEIVED", 1700000000000),
                                  ("BUFFERING", 1700000001000), ("PERSISTED", 1700000000000)]


# ------------------------------------------------------------------ faults


def test_fault_drop_after_bytes_cuts_the_connection_and_keeps_what_was_received(emulator):
    emulator.create_stream("cam")
    emulator.faults.drop_after_bytes(40_000)
    c = PutMediaClient(emulator.url, "cam")
    assert c.response() == 200
    with pytest.raises((BrokenPipeError, ConnectionResetError)):
        for i in range(0, len(REF), 2000):
            c.send(REF[i:i + 2000])
            time.sleep(0.002)
    c.read_acks(2)
    assert c.ended and not any(a["EventType"] == "ERROR" for a in c.acks)
    assert [e.producer_ts_ms for e in emulator.archive("cam")] == [1700000000000, 1700000001000]
    # one shot: the next connection goes through; re-sending from the start on a new connection is accepted
    # (4004 applies within one PutMedia call only), so the fragments received before the drop are archived twice
    wait_for(lambda: emulator.stats("cam").active == 0)
    status, acks, _ = put_media_requests(emulator.url, "cam", REF)
    assert status == 200 and acks[-1]["EventType"] == "PERSISTED"
    assert len(emulator.archive("cam")) == 2 + 6


@pytest.mark.parametrize("kind,status,etype", [("503", 503, "ServiceUnavailableException"),
                                               ("500", 500, "InternalFailure"),
                                               ("throttle", 400, "ClientLimitExceededException")])
def test_fault_fail_next_requests(emulator, kind, status, etype):
    emulator.create_stream("cam")
    emulator.faults.fail_next(2, kind)
    for _ in range(2):
        c = PutMediaClient(emulator.url, "cam")
        assert c.response() == status and c.response_headers["x-amzn-errortype"] == etype
    assert PutMediaClient(emulator.url, "cam").response() == 200


def test_fault_fail_next_applies_to_the_control_plane_too(emulator):
    client = kvs_client(emulator)
    emulator.faults.fail_next(1, "throttle", paths=["/describeStream"])
    client.create_stream(StreamName="cam")  # other paths are not affected
    with pytest.raises(client.exceptions.ClientLimitExceededException):
        client.describe_stream(StreamName="cam")
    assert client.describe_stream(StreamName="cam")["StreamInfo"]["StreamName"] == "cam"


def test_fault_offline_refuses_connections_on_the_same_port(emulator):
    emulator.create_stream("cam")
    header, c0, *_ = split_at_clusters(REF)
    c = PutMediaClient(emulator.url, "cam")
    c.response()
    c.send(header + c0)
    port = emulator.port
    emulator.faults.set_offline(True)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2)
    c.read_acks(2)
    assert c.ended  # the open connection was cut as well
    emulator.faults.set_offline(False)
    assert emulator.port == port
    wait_for(lambda: emulator.stats("cam").active == 0)
    assert PutMediaClient(emulator.url, "cam").response() == 200


def test_fault_error_on_nth_fragment(emulator):
    emulator.create_stream("cam")
    emulator.faults.error_on_fragment(5000, 3)
    status, acks, _ = put_media_requests(emulator.url, "cam", REF)
    assert events(acks)[-2:] == [("BUFFERING", 1700000002000), ("ERROR", 1700000002000)]
    assert acks[-1]["ErrorId"] == 5000 and acks[-1]["ErrorCode"] == "INTERNAL_ERROR"
    assert len(emulator.archive("cam")) == 2


def test_fault_delay_acks(emulator):
    emulator.create_stream("cam")
    emulator.faults.delay_acks(1.0)
    header, c0, c1, *_ = split_at_clusters(REF)
    with PutMediaClient(emulator.url, "cam") as c:
        c.response()
        c.send(header + c0 + c1)
        assert c.read_acks(0.3) == []  # held back
        c.read_acks(5, until=lambda a: a["EventType"] == "PERSISTED")
        assert events(c.acks)[:3] == [("BUFFERING", 1700000000000), ("RECEIVED", 1700000000000),
                                      ("PERSISTED", 1700000000000)]


def test_fault_stall_stops_reading(emulator):
    emulator.create_stream("cam")
    header, c0, c1, *_ = split_at_clusters(REF)
    with PutMediaClient(emulator.url, "cam") as c:
        c.response()
        emulator.faults.stall(1.0)
        c.send(header + c0 + c1)
        assert c.read_acks(0.3) == []  # nothing read, nothing acknowledged
        got = c.read_acks(5, until=lambda a: a["EventType"] == "PERSISTED")
        assert ("PERSISTED", 1700000000000) in events(got)


def test_a_client_that_gives_up_on_a_stalled_connection_frees_the_stream_slot(emulator):
    # The SDK resets a connection that got no BUFFERING ACK for 5 s and reconnects at once; its FIN is queued behind
    # the data the stalled server has not read. The stalled server must still see it, or every reconnect gets
    # ConnectionLimitExceeded until the stall ends.
    emulator.create_stream("cam")
    header, c0, c1, *rest = split_at_clusters(REF)
    emulator.faults.stall(30.0)
    first = PutMediaClient(emulator.url, "cam")
    assert first.response() == 200
    first.send(header + c0 + c1)
    assert first.read_acks(0.3) == []  # stalled: nothing processed
    first.close()
    wait_for(lambda: emulator.stats("cam").active == 0)
    second = PutMediaClient(emulator.url, "cam")
    assert second.response() == 200  # not ConnectionLimitExceeded
    emulator.faults.clear()
    second.send(REF)
    second.finish()
    second.read_until_end()
    assert ("PERSISTED", 1700000000000) in events(second.acks)
    assert emulator.stats("cam").http_errors == []


def test_fault_rate_limit_still_delivers_everything(emulator):
    emulator.create_stream("cam")
    emulator.faults.rate_limit(200_000)
    status, acks, _ = put_media_requests(emulator.url, "cam", REF)
    assert status == 200 and [a["EventType"] for a in acks].count("PERSISTED") == 6


# ------------------------------------------------------------------ control plane, persistence, archive endpoint


def test_botocore_control_plane(emulator):
    client = kvs_client(emulator)
    arn = client.create_stream(StreamName="cam-1", DataRetentionInHours=24, MediaType="video/h264")["StreamARN"]
    assert arn.startswith("arn:aws:kinesisvideo:us-east-1:") and "/cam-1/" in arn
    info = client.describe_stream(StreamName="cam-1")["StreamInfo"]
    assert info["Status"] == "ACTIVE" and info["StreamARN"] == arn and info["DataRetentionInHours"] == 24
    assert isinstance(info["CreationTime"], dt.datetime)
    ep = client.get_data_endpoint(StreamARN=arn, APIName="PUT_MEDIA")["DataEndpoint"]
    assert ep == emulator.url
    client.create_stream(StreamName="other")
    names = [s["StreamName"] for s in client.list_streams()["StreamInfoList"]]
    assert names == ["cam-1", "other"]
    cond = {"ComparisonOperator": "BEGINS_WITH", "ComparisonValue": "ca"}
    assert [s["StreamName"] for s in client.list_streams(StreamNameCondition=cond)["StreamInfoList"]] == ["cam-1"]
    with pytest.raises(client.exceptions.ResourceInUseException):
        client.create_stream(StreamName="cam-1")
    with pytest.raises(client.exceptions.ResourceNotFoundException) as e:
        client.describe_stream(StreamName="missing")
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404
    client.delete_stream(StreamARN=arn)
    with pytest.raises(client.exceptions.ResourceNotFoundException):
        client.get_data_endpoint(StreamName="cam-1", APIName="PUT_MEDIA")


def test_control_plane_rejects_bad_credentials(emulator):
    session = botocore.session.get_session()
    client = session.create_client("kinesisvideo", region_name="us-east-1", endpoint_url=emulator.url,
                                   aws_access_key_id=DEFAULT_ACCESS_KEY_ID, aws_secret_access_key="wrong",
                                   config=Config(retries={"max_attempts": 1}))
    with pytest.raises(client.exceptions.ClientError) as e:
        client.list_streams()
    assert e.value.response["Error"]["Code"] == "InvalidSignatureException"
    other_region = session.create_client("kinesisvideo", region_name="eu-west-1", endpoint_url=emulator.url,
                                         aws_access_key_id=DEFAULT_ACCESS_KEY_ID,
                                         aws_secret_access_key=DEFAULT_SECRET_ACCESS_KEY,
                                         config=Config(retries={"max_attempts": 1}))
    with pytest.raises(client.exceptions.ClientError, match="region"):
        other_region.list_streams()


def test_classic_mistake_post_to_root_gets_serialization_exception(emulator):
    r = requests.post(emulator.url + "/", data=b"\xff\xd8jpeg", headers={"X-Amz-Target": "PutMedia"}, timeout=5)
    assert r.status_code == 400 and r.headers["x-amzn-ErrorType"] == "SerializationException"


def test_streams_and_archive_survive_a_restart(make_emulator, tmp_path):
    data_dir = tmp_path / "persist"
    emu = make_emulator(data_dir=data_dir)
    emu.create_stream("cam")
    put_media_requests(emu.url, "cam", (SDK_DIR / "reset.session1.mkv").read_bytes())
    before = emu.archive("cam")
    emu.stop()
    emu2 = make_emulator(data_dir=data_dir)
    assert kvs_client(emu2).describe_stream(StreamName="cam")["StreamInfo"]["StreamName"] == "cam"
    assert emu2.archive("cam") == before
    # the stream keeps its cursor across the restart: fragment numbers go on upwards
    status, acks, _ = put_media_requests(emu2.url, "cam", (SDK_DIR / "reset.session2.mkv").read_bytes())
    assert acks[-1]["EventType"] == "PERSISTED"
    assert int(acks[0]["FragmentNumber"]) > int(before[-1].fragment_number)
    r = requests.get(emu2.url + "/archive/cam", timeout=5)
    assert r.status_code == 200 and [e["producer_ts_ms"] for e in r.json()][:4] == [e.producer_ts_ms for e in before]
    assert requests.get(emu2.url + "/archive/nope", timeout=5).status_code == 404


def test_cli_lists_the_archive_and_runs_until_sigterm(emulator, tmp_path):
    emulator.create_stream("cam")
    put_media_requests(emulator.url, "cam", REF)
    out = subprocess.run([sys.executable, "-m", "kvs_edge", "emulator", "--data-dir", str(emulator.data_dir),
                          "--list", "cam"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0
    rows = out.stdout.strip().splitlines()[1:]
    assert [int(r.split()[1]) for r in rows] == cluster_timecodes(REF)
    assert "6 fragments, 180 frames" in out.stderr
    bad = subprocess.run([sys.executable, "-m", "kvs_edge", "emulator", "--data-dir", str(emulator.data_dir),
                          "--list", "nope"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1
    proc = subprocess.Popen([sys.executable, "-m", "kvs_edge", "emulator", "--port", "0", "--data-dir",
                             str(tmp_path / "cli"), "--fault", "error=4000@1"], stdout=subprocess.PIPE, text=True)
    try:
        lines = [proc.stdout.readline() for _ in range(3)]
        assert DEFAULT_ACCESS_KEY_ID in lines[1] and DEFAULT_SECRET_ACCESS_KEY in lines[1]
        url = json.loads(lines[2])["url"]
        client = kvs_client(type("E", (), {"url": url})())
        client.create_stream(StreamName="cam", DataRetentionInHours=1)
        status, acks, _ = put_media_requests(url, "cam", REF)
        assert acks[-1]["ErrorId"] == 4000  # the --fault flag took effect
        proc.terminate()
        assert proc.wait(10) == 0
    finally:
        proc.kill()
    badfault = subprocess.run([sys.executable, "-m", "kvs_edge", "emulator", "--fault", "explode=1"],
                              capture_output=True, text=True, timeout=60)
    assert badfault.returncode == 2 and "unknown fault" in badfault.stderr


def test_cli_refuse_at_start_refuses_then_listens_on_the_same_port_and_prints_its_start_line_once(tmp_path):
    proc = subprocess.Popen([sys.executable, "-m", "kvs_edge", "emulator", "--port", "0", "--data-dir",
                             str(tmp_path / "cli"), "--fault", "refuse=1.5"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        lines = [proc.stdout.readline() for _ in range(3)]
        url = json.loads(lines[2])["url"]
        port = int(url.rsplit(":", 1)[1])
        with pytest.raises(ConnectionRefusedError):  # offline from the start
            socket.create_connection(("127.0.0.1", port), timeout=2)
        # then online on that very port (the timer does not fail with "Address already in use")
        wait_for(lambda: _connects(port), timeout=10)
        kvs_client(type("E", (), {"url": url})()).create_stream(StreamName="cam", DataRetentionInHours=1)
        proc.terminate()
        out, err = proc.communicate(timeout=10)
        assert proc.returncode == 0
    finally:
        proc.kill()
    everything = "".join(lines) + out + err
    assert everything.count("listening on") == 1, everything
    assert "Traceback" not in err and "Address already in use" not in err


def _connects(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
        return True
    except OSError:
        return False


def test_cli_serves_an_iot_credentials_provider_whose_keys_the_endpoint_accepts(tmp_path):
    """`kvs-edge emulator --iot-port 0`: a device certificate buys short-lived keys that KVS then accepts."""
    import json
    import signal
    import subprocess
    import sys

    import trustme

    from kvs_edge.config import AwsConfig, IotConfig
    from kvs_edge.kvs.control import ControlPlane
    from kvs_edge.kvs.credentials import resolve_credentials
    from support.pki import client_files, server_files, write_ca

    server_ca, device_ca = trustme.CA(), trustme.CA()
    srv = server_files(server_ca, tmp_path / "srv")
    dev = client_files(device_ca, tmp_path / "dev", "camera-07")
    proc = subprocess.Popen([sys.executable, "-m", "kvs_edge", "emulator", "--port", "0", "--data-dir",
                             str(tmp_path / "data"), "--tls-cert", str(srv.cert_file), "--tls-key", str(srv.key_file),
                             "--iot-port", "0", "--iot-client-ca", str(write_ca(device_ca, tmp_path / "dev-ca.pem")),
                             "--iot-lifetime", "60"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        info = None
        for line in proc.stdout:
            if line.startswith("{"):
                info = json.loads(line)
                break
        assert info and info["iot_endpoint"], proc.stderr.read() if info is None else info
        creds = resolve_credentials(AwsConfig(credentials="iot", iot=IotConfig(
            endpoint=info["iot_endpoint"], role_alias=info["iot_role_alias"], thing_name="camera-07",
            cert_file=str(dev.cert_file), key_file=str(dev.key_file), ca_file=str(srv.ca_file))))
        assert creds.get_frozen_credentials().access_key != info["access_key_id"]  # issued, not the demo key
        cp = ControlPlane("us-east-1", creds, endpoint_url=info["url"], ca_bundle=str(srv.ca_file))
        cp.ensure_stream("fleet-cam", create=True, retention_hours=24)
        assert cp.describe_stream("fleet-cam")["StreamName"] == "fleet-cam"
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(15)
