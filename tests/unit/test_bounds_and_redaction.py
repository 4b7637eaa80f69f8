"""Bounds on every I/O (HTTP by wall clock, S3 calls, snapshot decompression), URLs redacted everywhere,
settings that used to be accepted silently, and carriage returns in names."""

from __future__ import annotations

import gzip
import socket
import threading
import time
import zlib
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from refinery.config import ConfigError, display_value, load_enricher_config, parse_url, redact_url
from refinery.lineproto import escape_measurement, escape_tag
from refinery.metadata.snapshot import SnapshotError, decode_snapshot, encode_snapshot, gunzip_bounded
from refinery.s3 import BoundedClient, S3Timeout, run_bounded, time_limit
from refinery.sinks.http import bounded_session, describe_failure, read_answer
from refinery.sinks.http import time_limit as http_time_limit

SECRET = "s3cr3t-VALUE"

# ------------------------------------------------------------------------------------------- URLs


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (f"writer:{SECRET}@influx:8086", "***@influx:8086"),
        (f"http://writer:{SECRET}@influx:8086/x", "http://***@influx:8086/x"),
        (f"http://h/?u=writer&p={SECRET}", "http://h/?u=***&p=***"),
        (f"https://w:pa/ss{SECRET}@h/p?x=1#{SECRET}", "https://***@h/p?x=***#***"),
        (f"http://h/?{SECRET}", "http://h/?***"),
        (f"http://h/a;k={SECRET}/b", "http://h/a;k=***/b"),
        ("http://influx:8086", "http://influx:8086"),
    ],
)
def test_redact_url_hides_user_info_and_query_values(url: str, shown: str) -> None:
    assert redact_url(url) == shown and SECRET not in redact_url(url)


@pytest.mark.parametrize(
    ("url", "why"),
    [
        (f"writer:{SECRET}@influx:8086", "is not an http(s) URL"),
        (f"http://writer:{SECRET}@influx:8086", "must not hold credentials (user:password@)"),
        (f"http://writer:pa/ss{SECRET}@influx:8086", "must not hold credentials (user:password@)"),
        (f"http://influx:8086/?u=writer&p={SECRET}", "must not hold credentials in its query string (u=…)"),
        (
            f"http://influx:8086/?db=cf&token={SECRET}",
            "must not hold credentials in its query string (token=…)",
        ),
        (f"http://influx:{SECRET}", "has a port that is not a number"),
    ],
)
def test_url_settings_refuse_credentials_without_echoing_them(url: str, why: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_url(url)
    assert why in str(caught.value) and SECRET not in str(caught.value)


def test_a_base_url_has_no_query_and_every_url_setting_is_shown_redacted() -> None:
    with pytest.raises(ConfigError) as caught:
        load_enricher_config(
            {"INFLUX_URL": f"http://h:8086/?x={SECRET}", "INFLUX_DATABASE": "d", "METADATA_BUCKET": "b"}
        )
    assert (
        "INFLUX_URL" in str(caught.value) and SECRET not in str(caught.value) and "x=***" in str(caught.value)
    )
    remote = load_enricher_config(
        {
            "PROM_REMOTE_WRITE_URL": f"http://vm/api/v1/write?extra_label=team%3D{SECRET}",
            "METADATA_BUCKET": "b",
        }
    ).prometheus
    assert remote is not None and SECRET in remote.url  # accepted (not a credential name), but never shown:
    assert display_value("PROM_REMOTE_WRITE_URL", remote.url) == "http://vm/api/v1/write?extra_label=***"
    assert display_value("INFLUX_URL", f"writer:{SECRET}@h") == "(not an http(s) URL: not shown)"
    assert display_value("INFLUX_PASSWORD", SECRET) == "(set)"
    assert display_value("INFLUX_DATABASE", "cf") == "cf"


def test_sink_messages_show_urls_redacted() -> None:
    from refinery.sinks.prometheus_rw import PrometheusRemoteWriteSink

    config = load_enricher_config(
        {
            "PROM_REMOTE_WRITE_URL": f"http://127.0.0.1:9/api/v1/write?extra_label=k%3D{SECRET}",
            "METADATA_BUCKET": "b",
        }
    ).prometheus
    assert config is not None
    sink = PrometheusRemoteWriteSink(config)
    try:
        assert sink.shown_url == "http://127.0.0.1:9/api/v1/write?extra_label=***"
    finally:
        sink.close()


# --------------------------------------------------------------------------------------- settings

V1 = {"INFLUX_URL": "http://h:8086", "INFLUX_DATABASE": "cf", "METADATA_BUCKET": "b"}


@pytest.mark.parametrize(
    ("env", "problem"),
    [
        ({**V1, "INFLUX_TOKEN": "t"}, "INFLUX_TOKEN: v2 API setting(s) given with INFLUX_DATABASE"),
        (
            {**V1, "INFLUX_ORG": "o", "INFLUX_BUCKET": "b"},
            "INFLUX_ORG, INFLUX_BUCKET: v2 API setting(s) given",
        ),
        ({**V1, "INFLUX_TOKEN_SECRET": "arn"}, "INFLUX_TOKEN: v2 API setting(s) given with INFLUX_DATABASE"),
        (
            {"INFLUX_URL": "http://h", "INFLUX_TOKEN": "t", "INFLUX_ORG": "o", "INFLUX_BUCKET": "b"}
            | {"INFLUX_USERNAME": "u", "METADATA_BUCKET": "b"},
            "INFLUX_USERNAME: v1 API setting(s) without INFLUX_DATABASE",
        ),
        ({**V1, "INFLUX_PASSWORD": "pw"}, "INFLUX_USERNAME: required with INFLUX_PASSWORD"),
        ({**V1, "INFLUX_PASSWORD_PARAMETER": "/p"}, "INFLUX_USERNAME: required with INFLUX_PASSWORD"),
        ({**V1, "METADATA_FILE": __file__}, "METADATA_FILE: give METADATA_FILE (a local snapshot file) or"),
        ({**V1, "INFLUX_TIMEOUT": "0"}, "INFLUX_TIMEOUT: '0' must be more than 0"),
        ({**V1, "INFLUX_MAX_RETRY_WAIT": "0ms"}, "INFLUX_MAX_RETRY_WAIT: '0ms' must be more than 0"),
        (
            {**V1, "PROM_REMOTE_WRITE_URL": "http://p/w", "PROM_TIMEOUT": "0s"},
            "PROM_TIMEOUT: '0s' must be more",
        ),
        ({**V1, "CF_TIMEOUT": "0"}, "CF_TIMEOUT: '0' must be more than 0"),
    ],
)
def test_settings_accepted_silently_before_are_errors_naming_them(env: dict[str, str], problem: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_enricher_config(env, resolver=lambda *_: "x")
    assert any(p.startswith(problem) for p in caught.value.problems), caught.value.problems


def test_the_accepted_combinations_still_load() -> None:
    assert load_enricher_config({**V1, "INFLUX_USERNAME": "u", "INFLUX_PASSWORD": "pw"}).influx is not None
    v2 = {"INFLUX_URL": "http://h", "INFLUX_TOKEN": "t", "INFLUX_ORG": "o", "INFLUX_BUCKET": "b"}
    assert load_enricher_config({**v2, "METADATA_BUCKET": "b"}).influx.api == "v2"  # type: ignore[union-attr]
    assert (
        load_enricher_config({"METADATA_FILE": __file__, "QUARANTINE_BUCKET": "q"}).quarantine_bucket == "q"
    )


# ------------------------------------------------------------------------ HTTP by wall clock


class Trickler:
    """A local server: status and headers at once (or byte by byte), then the body one byte at a time."""

    def __init__(self, headers_too: bool = False, interval: float = 0.2):
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/write"
        self.headers_too, self.interval = headers_too, interval
        self.stop = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn: socket.socket) -> None:
        with conn:
            conn.recv(65536)
            head = b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n"
            try:
                if not self.headers_too:
                    conn.sendall(head)
                    head = b""
                for byte in head + b"x" * 1000:
                    if self.stop.wait(self.interval):
                        return
                    conn.sendall(bytes([byte]))
            except OSError:
                return

    def close(self) -> None:
        self.stop.set()
        self.sock.close()


@pytest.fixture(params=[False, True], ids=["body", "headers"])
def trickler(request: pytest.FixtureRequest) -> Iterator[Trickler]:
    server = Trickler(headers_too=request.param)
    yield server
    server.close()


def test_a_trickling_answer_is_cut_at_the_request_s_wall_clock_limit(trickler: Trickler) -> None:
    session = bounded_session()
    started = time.monotonic()
    with pytest.raises(requests.RequestException) as caught, http_time_limit(1.0):
        response = session.post(trickler.url, data=b"x", timeout=(1.0, 1.0), stream=True)
        read_answer(response)
    elapsed = time.monotonic() - started
    assert 0.9 <= elapsed < 1.5  # each byte came within the 1 s read timeout: only the limit ends it
    assert describe_failure(caught.value, 1.0, elapsed).startswith("no complete answer within 1.0 s")
    session.close()


# -------------------------------------------------------------------------------------------- S3


def test_an_s3_call_is_abandoned_at_its_limit() -> None:
    release = threading.Event()
    started = time.monotonic()
    with pytest.raises(S3Timeout, match=r"S3 get_object: S3 did not answer within 0\.2 s"):
        run_bounded(lambda: release.wait(10), 0.2, "S3 get_object")
    assert time.monotonic() - started < 0.5
    release.set()
    with time_limit(0.1), pytest.raises(S3Timeout, match=r"within 0\.1 s"):  # the caller's limit is smaller
        run_bounded(lambda: time.sleep(1), 5.0, "S3 get_object")
    with time_limit(-1), pytest.raises(S3Timeout, match="no time left"):
        run_bounded(lambda: None, 5.0, "S3 put_object")
    with pytest.raises(KeyError):  # the call's own error is the caller's
        run_bounded(lambda: {}["x"], 1.0, "S3 get_object")


def test_the_bounded_client_reads_a_body_in_its_call() -> None:
    class Body:
        def __init__(self) -> None:
            self.closed = False

        def read(self, amt: int | None = None) -> bytes:
            return b"snapshot"

        def close(self) -> None:
            self.closed = True

    class Client:
        def get_object(self, **kwargs: Any) -> dict[str, Any]:
            return {"Body": Body(), "ETag": '"e"', "ContentLength": 8}

        def put_object(self, **kwargs: Any) -> dict[str, Any]:
            time.sleep(1)
            return {}

    client = BoundedClient(Client(), lambda: 0.2)
    got = client.get_object(Bucket="b", Key="k")
    assert got["Body"].read() == b"snapshot" and got["ETag"] == '"e"'
    with pytest.raises(S3Timeout):
        client.put_object(Bucket="b", Key="k", Body=b"")


# -------------------------------------------------------------------------------- decompression


def test_a_gzip_bomb_is_refused_at_the_limit_without_expanding_it() -> None:
    member = gzip.compress(b"\0" * 2**20, compresslevel=9)
    bomb = member * 3072  # ~3 MB that gzip.decompress would expand to 3 GiB
    started = time.monotonic()
    with pytest.raises(SnapshotError, match="expands to more than 128 MiB"):
        decode_snapshot(bomb)
    assert time.monotonic() - started < 5
    with pytest.raises(SnapshotError, match="expands to more than 1 MiB"):
        gunzip_bounded(gzip.compress(b"\0" * (2**20 + 1)), 2**20)
    assert gunzip_bounded(gzip.compress(b"\0" * 2**20), 2**20) == b"\0" * 2**20


def test_bounded_gunzip_reads_what_gzip_reads() -> None:
    from datetime import UTC, datetime

    snapshot = encode_snapshot({}, "https://api", datetime(2026, 1, 1, tzinfo=UTC))
    assert decode_snapshot(snapshot).source == "https://api"
    assert gunzip_bounded(gzip.compress(b"ab") + gzip.compress(b"cd") + b"\0\0", 10) == b"abcd"
    for broken, why in [(b"nope", "not a gzip file"), (gzip.compress(b"abc")[:-6], "truncated")]:
        with pytest.raises(SnapshotError, match=why):
            gunzip_bounded(broken, 10)
    flipped = bytearray(gzip.compress(b"abc" * 100))
    flipped[12] ^= 0xFF
    with pytest.raises((SnapshotError, zlib.error)):
        gunzip_bounded(bytes(flipped), 10_000)


# ------------------------------------------------------------------------------------ escaping


def test_a_carriage_return_in_a_name_becomes_a_space_like_a_line_feed() -> None:
    assert escape_tag("a\rb\nc") == "a\\ b\\ c"
    assert escape_measurement("m\r\nx") == "m\\ \\ x"
