"""The remote-write sink over real HTTP (a local server that decodes what it receives).

Real Prometheus and VictoriaMetrics: tests/integration/test_remote_write.py.
"""

from __future__ import annotations

import base64
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import cramjam
import pytest

from refinery import __version__
from refinery.config import PrometheusConfig, load_enricher_config
from refinery.sinks import Deadline, FlushError, build_sink
from refinery.sinks.fanout import FanoutSink
from refinery.sinks.prometheus_rw import PrometheusRemoteWriteSink, label_name, metric_name
from refinery.sinks.remote_write_proto import write_request_class
from refinery_tools.dev.servers import free_port

DEADLINE = Deadline(lambda: 60_000, reserve=1.0)
T = 1_700_000_000_123_456_789


class Receiver:
    """Accepts remote-write requests, decodes them, and answers what ``respond`` says."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.respond: Callable[[dict[str, Any]], tuple[int, dict[str, str], str]] = lambda r: (204, {}, "")
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                message = write_request_class().FromString(bytes(cramjam.snappy.decompress_raw(body)))
                request = {"path": self.path, "headers": dict(self.headers), "series": series_of(message)}
                receiver.requests.append(request)
                status, headers, text = receiver.respond(request)
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(text)))
                self.end_headers()
                self.wfile.write(text.encode())

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/api/v1/write"
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def series_of(message: Any) -> list[tuple[tuple[tuple[str, str], ...], list[tuple[int, float]]]]:
    return [
        (
            tuple((label.name, label.value) for label in ts.labels),
            [(s.timestamp, s.value) for s in ts.samples],
        )
        for ts in message.timeseries
    ]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    yield server
    server.close()


def sink_for(receiver: Receiver, **settings: Any) -> PrometheusRemoteWriteSink:
    return PrometheusRemoteWriteSink(PrometheusConfig(url=receiver.url, **settings), sleep=lambda s: None)


def test_points_become_named_labelled_millisecond_samples(receiver: Receiver) -> None:
    sink = sink_for(receiver)
    report = sink.write(
        [
            f"http_request,app=my\\ app,instance=1,org=a\\,b,status_code=200 count=1i,duration=0.25 {T}",
            f"instance,app=x,empty=,instance=0 cpu=1.5,ok=true {T + 5_000_000}",
        ],
        DEADLINE,
    )
    assert report.rejected == [] and report.chunks == 1
    (request,) = receiver.requests
    ms = T // 1_000_000
    assert request["series"] == [
        (
            (
                ("__name__", "http_request_count"),
                ("app", "my app"),
                ("instance", "1"),
                ("org", "a,b"),
                ("status_code", "200"),
            ),
            [(ms, 1.0)],
        ),
        (
            (
                ("__name__", "http_request_duration"),
                ("app", "my app"),
                ("instance", "1"),
                ("org", "a,b"),
                ("status_code", "200"),
            ),
            [(ms, 0.25)],
        ),
        ((("__name__", "instance_cpu"), ("app", "x"), ("instance", "0")), [(ms + 5, 1.5)]),
        ((("__name__", "instance_ok"), ("app", "x"), ("instance", "0")), [(ms + 5, 1.0)]),
    ]
    headers = request["headers"]
    assert request["path"] == "/api/v1/write"
    assert headers["User-Agent"] == f"refinery/{__version__}"
    assert headers["Content-Encoding"] == "snappy"
    assert headers["Content-Type"] == "application/x-protobuf"
    assert headers["X-Prometheus-Remote-Write-Version"] == "0.1.0"
    assert "Authorization" not in headers


def test_names_are_sanitised() -> None:
    assert metric_name("http-request", "duration.s") == "http_request_duration_s"
    assert metric_name("9lives", "x:y") == "_9lives_x:y"
    assert label_name("status code") == "status_code"
    assert label_name("1a") == "_1a"
    assert label_name("a:b") == "a_b"


def test_samples_of_a_series_within_one_millisecond_are_moved_apart(receiver: Receiver) -> None:
    sink = sink_for(receiver, batch_size=2)
    lines = [f"log,app=a count=1i,size={i}i {T + i}" for i in range(3)] + [f"log,app=b count=1i,size=9i {T}"]
    sink.write(lines, DEADLINE)
    ms = T // 1_000_000
    per_request = [
        {(labels[0][1], labels[1][1]): samples for labels, samples in request["series"]}
        for request in receiver.requests
    ]
    # Sent in time order (a@T, b@T | a@T+1ns, a@T+2ns), so no request holds a sample older than one
    # already sent of its series; three points of one millisecond moved apart, across the two requests.
    assert [got.get(("log_size", "a")) for got in per_request] == [
        [(ms, 0.0)],
        [(ms + 1, 1.0), (ms + 2, 2.0)],
    ]
    assert per_request[0][("log_size", "b")] == [(ms, 9.0)]  # another series keeps its time


def test_string_fields_are_skipped_and_counted_unreadable_lines_refused(receiver: Receiver) -> None:
    report = sink_for(receiver).write([f'log,app=a msg="hi there",size=3i {T}', "garbage"], DEADLINE)
    assert report.skipped_fields == 1
    assert [index for index, _ in report.rejected] == [1]
    assert "cannot convert" in report.rejected[0][1]
    ((labels, _),) = receiver.requests[0]["series"]
    assert labels[0] == ("__name__", "log_size")


def test_basic_and_bearer_auth(receiver: Receiver) -> None:
    sink_for(receiver, username="u", password="p@ss").write([f"m f=1 {T}"], DEADLINE)
    sink_for(receiver, bearer_token="t0k3n").write([f"m f=1 {T}"], DEADLINE)
    assert receiver.requests[0]["headers"]["Authorization"] == "Basic " + base64.b64encode(b"u:p@ss").decode()
    assert receiver.requests[1]["headers"]["Authorization"] == "Bearer t0k3n"


def test_refused_series_are_isolated_and_the_rest_written(receiver: Receiver) -> None:
    def respond(request: dict[str, Any]) -> tuple[int, dict[str, str], str]:
        if any(("app", "bad") in labels for labels, _ in request["series"]):
            return 400, {}, "out of order sample"
        return 204, {}, ""

    receiver.respond = respond
    lines = [f"log,app={'bad' if i in (2, 5) else 'ok'} count=1i {T + i * 1_000_000}" for i in range(8)]
    report = sink_for(receiver).write(lines, DEADLINE)
    assert [index for index, _ in report.rejected] == [2, 5]
    assert "answered 400: out of order sample" in report.rejected[0][1]
    accepted = [
        ms
        for request in receiver.requests
        if not any(("app", "bad") in labels for labels, _ in request["series"])
        for labels, samples in request["series"]
        for ms, _ in samples
    ]
    assert sorted(set(accepted)) == [T // 1_000_000 + i for i in range(8) if i not in (2, 5)]


def test_retry_after_is_honoured_and_404_says_what_to_fix(receiver: Receiver) -> None:
    answers = iter([(429, {"Retry-After": "1"}, "slow down"), (204, {}, "")])
    receiver.respond = lambda request: next(answers)
    waits: list[float] = []
    sink = PrometheusRemoteWriteSink(PrometheusConfig(url=receiver.url), sleep=waits.append)
    report = sink.write([f"m f=1 {T}"], DEADLINE)
    assert (report.retries, waits) == (1, [1.0])

    receiver.respond = lambda request: (404, {}, "404 page not found")
    with pytest.raises(FlushError, match=r"--web\.enable-remote-write-receiver"):
        sink.write([f"m f=1 {T}"], DEADLINE)


def test_settings_build_the_sinks(tmp_path) -> None:
    snapshot = tmp_path / "s.json.gz"
    snapshot.write_bytes(b"x")
    base = {"METADATA_FILE": str(snapshot), "PROM_REMOTE_WRITE_URL": "http://127.0.0.1:9/api/v1/write"}
    alone = build_sink(None, load_enricher_config(base).prometheus)
    assert isinstance(alone, PrometheusRemoteWriteSink)
    both = build_sink(
        load_enricher_config({**base, "INFLUX_URL": "http://127.0.0.1:9", "INFLUX_DATABASE": "cf"}).influx,
        load_enricher_config(base).prometheus,
    )
    assert isinstance(both, FanoutSink) and both.name == "influxdb-v1+prometheus-remote-write"

    def resolver(setting: str, kind: str, reference: str) -> str:
        return f"resolved-{setting}"

    config = load_enricher_config({**base, "PROM_BEARER_TOKEN_SECRET": "arn:secret"}, resolver=resolver)
    assert config.prometheus is not None and config.prometheus.bearer_token == "resolved-PROM_BEARER_TOKEN"
    assert "resolved" not in repr(config)
    with pytest.raises(Exception, match="PROM_BEARER_TOKEN: give a bearer token or"):
        load_enricher_config({**base, "PROM_BEARER_TOKEN": "t", "PROM_USERNAME": "u"})
    with pytest.raises(Exception, match="PROM_USERNAME: required with PROM_PASSWORD"):
        load_enricher_config({**base, "PROM_PASSWORD": "p"})


def test_both_sinks_must_acknowledge_and_refusals_are_merged() -> None:
    first, second = Receiver(), Receiver()
    try:
        first.respond = lambda r: (
            (400, {}, "bad") if any(("app", "x") in labels for labels, _ in r["series"]) else (204, {}, "")
        )
        seen = []

        def second_respond(request: dict[str, Any]) -> tuple[int, dict[str, str], str]:
            seen.append(request)
            return (401, {}, "no") if len(seen) > 1 else (204, {}, "")

        second.respond = second_respond
        fanout = FanoutSink([sink_for(first, batch_size=2), sink_for(second, batch_size=2)])
        lines = [f"log,app={'x' if i == 1 else 'ok'} count=1i {T + i * 1_000_000}" for i in range(6)]
        with pytest.raises(FlushError, match="401") as caught:
            fanout.write(lines, DEADLINE)
        # The first sink took all six (refusing line 1); the second only its first chunk.
        assert caught.value.acknowledged == 2
        assert caught.value.report is not None and [i for i, _ in caught.value.report.rejected] == [1]

        second.respond = lambda r: (204, {}, "")
        report = fanout.write(lines, DEADLINE)  # the retry rewrites both
        assert [i for i, _ in report.rejected] == [1] and report.chunks == 3 + 3
    finally:
        first.close()
        second.close()
