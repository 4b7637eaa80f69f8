"""The synthetic workloads of the bench and the cold-start emulation, in the nozzle's exact wire format.

Batches are synthetic but byte-compatible with the nozzle (:func:`nozzle_json` reproduces the bundled
samples byte for byte: compact JSON, easyjson key order and escaping, Go float format); a foundation
of any size (:func:`foundation_for`) with its metadata snapshot; and a fake Cloud Controller serving
it in a child process (:func:`fake_cloud_controller`).
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import json
import math
import random
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import orjson

from refinery.metadata.snapshot import AppInfo, encode_snapshot
from refinery.metadata.store import MetadataStore, SnapshotSource
from refinery_tools.dev.fake_cc import Foundation
from refinery_tools.events import build_kafka_event

MIB = 1024 * 1024
SNAPSHOT_SOURCE = "https://api.sys.example.com"
SNAPSHOT_TIME = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
CC_SECRET = "bench-secret"


def mib(size: float) -> str:
    return f"{size / MIB:.2f} MiB"


def num(n: int) -> str:
    return f"{n:,}".replace(",", " ")


# ------------------------------------------------------------------------ nozzle wire format (JSON)


def go_float(value: float) -> str:
    """Go's ``strconv.FormatFloat(v, 'g', -1, 64)``, as easyjson writes a float64."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value == 0:
        return "-0" if math.copysign(1.0, value) < 0 else "0"
    sign, digit_tuple, exponent = Decimal(repr(value)).normalize().as_tuple()
    assert isinstance(exponent, int)
    digits = "".join(map(str, digit_tuple))
    point = len(digits) + exponent  # value = 0.<digits> × 10^point
    minus = "-" if sign else ""
    power = point - 1
    if power < -4 or power >= 6:  # shortest formatting: %e when the exponent is < -4 or >= 6
        mantissa = digits[0] + ("." + digits[1:] if len(digits) > 1 else "")
        return f"{minus}{mantissa}e{'-' if power < 0 else '+'}{abs(power):02d}"
    if point <= 0:
        return f"{minus}0.{'0' * -point}{digits}"
    if point >= len(digits):
        return f"{minus}{digits}{'0' * (point - len(digits))}"
    return f"{minus}{digits[:point]}.{digits[point:]}"


def _go_floats(value: Any) -> Any:
    if type(value) is float:
        return orjson.Fragment(go_float(value))
    if type(value) is dict:
        return {k: _go_floats(v) for k, v in value.items()}
    if type(value) is list:
        return [_go_floats(v) for v in value]
    return value


def nozzle_json(document: Mapping[str, Any]) -> bytes:
    """Serialise like kafka-firehose-nozzle (easyjson): compact, keys in the given order, floats as
    Go writes them, ``<`` ``>`` ``&`` U+2028 U+2029 escaped as ``\\uXXXX``."""
    raw = orjson.dumps(_go_floats(document))
    for char in ("&", "<", ">", "\u2028", "\u2029"):
        if char.encode() in raw:
            raw = raw.replace(char.encode(), f"\\u{ord(char):04x}".encode())
    return raw


def guid_to_uuid(guid: str) -> dict[str, int]:
    """``8-4-4-4-12`` GUID -> sonde-go ``{"low": u64, "high": u64}`` (the inverse of uuid_to_guid)."""
    raw = bytes.fromhex(guid.replace("-", ""))
    return {"low": int.from_bytes(raw[:8], "little"), "high": int.from_bytes(raw[8:], "little")}


# ----------------------------------------------------------------------------- synthetic foundation


def foundation_for(apps: int, seed: int) -> Foundation:
    """A foundation of about ``apps`` apps: 10 spaces per org, 10 apps per space."""
    return Foundation.generate(orgs=max(1, -(-apps // 100)), spaces_per_org=10, apps_per_space=10, seed=seed)


def snapshot_of(apps: Mapping[str, AppInfo]) -> bytes:
    return encode_snapshot(apps, SNAPSHOT_SOURCE, SNAPSHOT_TIME)


class BytesSnapshotSource(SnapshotSource):
    """A snapshot held in memory (no I/O): the bytes once, then "unchanged"."""

    description = "memory"

    def __init__(self, data: bytes):
        self.data = data

    def fetch(self, etag: str | None) -> tuple[bytes | None, str | None]:
        return (None, etag) if etag == "bench" else (self.data, "bench")


def new_store(snapshot: bytes) -> MetadataStore:
    return MetadataStore(BytesSnapshotSource(snapshot))


def start_invocation(store: MetadataStore) -> None:
    """What the pipeline does on the store before each batch (check the snapshot, reset the memo)."""
    begin = getattr(store, "begin_invocation", None)
    if begin is not None:
        begin()
    else:
        store.refresh_if_due()


# -------------------------------------------------------------------------------- synthetic traffic

_MIX = (
    ("http", 0.45),
    ("app_log", 0.30),
    ("rtr_log", 0.10),
    ("container", 0.10),
    ("value_metric", 0.03),
    ("counter_event", 0.02),
)
_WORDS = (
    "order user cache request session payment invoice account token retry query worker queue event stock"
    " price cart item pool client timeout listed saved loaded updated completed started connection batch"
    " message consumer producer scheduler report customer shipment"
).split()
_LEVELS = ("INFO",) * 8 + ("WARN", "ERROR", "DEBUG")
_PATHS = (
    "/api/orders?page={n}&size=20",
    "/api/users/{n}",
    "/health",
    "/api/cart/{n}/items",
    "/static/js/app.{n}.js",
    "/v1/search?q=item{n}&limit=50&offset={n}",
    "/api/v2/products/{n}/reviews?sort=recent",
    "/login",
)
_AGENTS = (
    "curl/7.58.0",
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko)"
    " Chrome/69.0.3497.100 Safari/537.36",
    "okhttp/3.11.0",
    "Go-http-client/1.1",
    "python-requests/2.19.1",
    "Apache-HttpClient/4.5.6 (Java/1.8.0_181)",
)
_METHODS = ((1, 70), (2, 18), (3, 6), (4, 3), (26, 2), (5, 1))  # GET POST PUT DELETE PATCH HEAD
_STATUSES = (
    (200, 80),
    (201, 4),
    (204, 3),
    (302, 2),
    (304, 3),
    (400, 2),
    (401, 1),
    (404, 3),
    (500, 1),
    (503, 1),
)
_VALUE_METRICS = (
    ("memoryStats.numBytesAllocatedHeap", "count"),
    ("numGoRoutines", "count"),
    ("latency", "ms"),
    ("route_lookup_time", "ns"),
)
_QUOTAS = (256 * MIB, 512 * MIB, 1024 * MIB, 2048 * MIB)
_BASE_NS = 1_537_510_364_000_000_000


class TrafficGenerator:
    """Nozzle-format envelopes for a set of apps, with Zipf-like traffic (few apps dominate)."""

    def __init__(self, apps: Sequence[AppInfo], seed: int = 1):
        self.rng = random.Random(seed)
        self.apps = list(apps)
        self.weights = [1.0 / (rank + 1) ** 0.9 for rank in range(len(self.apps))]
        self.uuids = {a.guid: guid_to_uuid(a.guid) for a in self.apps}
        self.instances = {a.guid: 1 + self.rng.randrange(4) for a in self.apps}
        rng = self.rng
        self.routers = [
            (str(uuid.UUID(int=rng.getrandbits(128), version=4)), f"10.0.1.{20 + i}") for i in range(4)
        ]
        self.cells = [
            (str(uuid.UUID(int=rng.getrandbits(128), version=4)), f"10.0.2.{10 + i}") for i in range(12)
        ]
        self.methods, self.method_weights = zip(*_METHODS, strict=True)
        self.statuses, self.status_weights = zip(*_STATUSES, strict=True)

    def kinds(self, count: int) -> list[str]:
        kinds: list[str] = []
        for name, share in _MIX:
            kinds.extend([name] * round(count * share))
        while len(kinds) < count:
            kinds.append("http")
        del kinds[count:]
        self.rng.shuffle(kinds)
        return kinds

    def envelopes(self, count: int) -> tuple[list[bytes], Counter[str]]:
        kinds = self.kinds(count)
        senders = self.rng.choices(self.apps, weights=self.weights, k=count)
        out = []
        for i, (kind, app) in enumerate(zip(kinds, senders, strict=True)):
            when = _BASE_NS + i * 97_000 + self.rng.randrange(50_000)
            out.append(nozzle_json(getattr(self, kind)(app, when)))
        return out, Counter(kinds)

    # -- one envelope of each kind (key order as the nozzle writes them) -----------------------------

    def _header(
        self, origin: str, event_type: int, when: int, source: tuple[str, str], job: str
    ) -> dict[str, Any]:
        return {
            "origin": origin,
            "eventType": event_type,
            "timestamp": when + self.rng.randrange(100_000, 2_000_000),
            "deployment": "cf",
            "job": job,
            "index": source[0],
            "ip": source[1],
        }

    def _instance(self, app: AppInfo) -> int:
        return self.rng.randrange(self.instances[app.guid])

    def http(self, app: AppInfo, when: int) -> dict[str, Any]:
        rng = self.rng
        duration = int(rng.lognormvariate(math.log(15e6), 1.0))
        status = rng.choices(self.statuses, self.status_weights)[0]
        index = self._instance(app)
        envelope = self._header("gorouter", 4, when + duration, rng.choice(self.routers), "router")
        envelope["httpStartStop"] = {
            "startTimestamp": when,
            "stopTimestamp": when + duration,
            "requestId": {"low": rng.getrandbits(64), "high": rng.getrandbits(64)},
            "peerType": 1,
            "method": rng.choices(self.methods, self.method_weights)[0],
            "uri": f"http://{app.name}.apps.example.com" + rng.choice(_PATHS).format(n=rng.randrange(1000)),
            "remoteAddress": f"10.0.4.{rng.randrange(256)}:{rng.randrange(1024, 65536)}",
            "userAgent": rng.choice(_AGENTS),
            "statusCode": status,
            "contentLength": 0 if status in (204, 304) else int(rng.lognormvariate(7.5, 1.2)),
            "applicationId": self.uuids[app.guid],
            "instanceIndex": index,
            "instanceId": f"{app.guid[:8]}-{index:04x}-4e7a-7c44-{app.guid[-4:]}",
            "forwarded": [f"203.0.113.{rng.randrange(256)}", "10.0.2.5"],
        }
        return envelope

    def _app_text(self, when: int) -> str:
        rng = self.rng
        length = int(rng.triangular(60, 400, 140))
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(when // 1_000_000_000))
        text = (
            f"{stamp}.{when // 1_000_000 % 1000:03d} {rng.choice(_LEVELS)} {rng.randrange(1, 99)} --- "
            f"[nio-8080-exec-{rng.randrange(1, 20)}] c.e.{rng.choice(_WORDS).title()}Controller : "
        )
        while len(text) < length:
            text += rng.choice(_WORDS) + " "
        return text[: length - 1] + "\n"

    def app_log(self, app: AppInfo, when: int) -> dict[str, Any]:
        envelope = self._header("rep", 5, when, self.rng.choice(self.cells), "diego_cell")
        envelope["tags"] = {"source_id": app.guid}
        envelope["logMessage"] = {
            "message": base64.b64encode(self._app_text(when).encode()).decode(),
            "message_type": 2 if self.rng.random() < 0.1 else 1,
            "timestamp": when,
            "app_id": app.guid,
            "source_type": "APP/PROC/WEB",
            "source_instance": str(self._instance(app)),
        }
        return envelope

    def rtr_log(self, app: AppInfo, when: int) -> dict[str, Any]:
        rng = self.rng
        moment = dt.datetime.fromtimestamp(when / 1e9, dt.UTC).isoformat(timespec="milliseconds")
        text = (
            f"{app.name}.apps.example.com - [{moment}]"
            f' "GET {rng.choice(_PATHS).format(n=rng.randrange(1000))}'
            f' HTTP/1.1" 200 0 {rng.randrange(100, 99999)} "-" "{rng.choice(_AGENTS[:3])}"'
            f' "10.0.4.{rng.randrange(256)}:{rng.randrange(1024, 65536)}" "10.0.2.{rng.randrange(256)}:61002"'
            f' x_forwarded_for:"203.0.113.{rng.randrange(256)}" x_forwarded_proto:"https"'
            f' vcap_request_id:"{uuid.UUID(int=rng.getrandbits(128), version=4)}"'
            f' response_time:{rng.random():.9f} app_id:"{app.guid}" app_index:"{self._instance(app)}"'
        )[:399] + "\n"
        envelope = self._header("gorouter", 5, when, rng.choice(self.routers), "router")
        envelope["logMessage"] = {
            "message": base64.b64encode(text.encode()).decode(),
            "message_type": 1,
            "timestamp": when,
            "app_id": app.guid,
            "source_type": "RTR",
            "source_instance": str(rng.randrange(4)),
        }
        return envelope

    def container(self, app: AppInfo, when: int) -> dict[str, Any]:
        rng = self.rng
        memory_quota = rng.choice(_QUOTAS)
        disk_quota = 1024 * MIB * rng.choice((1, 2, 4))
        envelope = self._header("rep", 9, when, rng.choice(self.cells), "diego_cell")
        envelope["timestamp"] = when
        envelope["containerMetric"] = {
            "applicationId": app.guid,
            "instanceIndex": self._instance(app),
            "cpuPercentage": 0.0 if rng.random() < 0.05 else rng.lognormvariate(0.0, 1.3),
            "memoryBytes": rng.randrange(memory_quota // 8, memory_quota),
            "diskBytes": rng.randrange(disk_quota // 16, disk_quota // 2),
            "memoryBytesQuota": memory_quota,
            "diskBytesQuota": disk_quota,
        }
        return envelope

    def value_metric(self, app: AppInfo, when: int) -> dict[str, Any]:
        name, unit = self.rng.choice(_VALUE_METRICS)
        envelope = self._header("gorouter", 6, when, self.rng.choice(self.routers), "router")
        envelope["valueMetric"] = {
            "name": name,
            "value": float(self.rng.randrange(1, 50_000_000)),
            "unit": unit,
        }
        return envelope

    def counter_event(self, app: AppInfo, when: int) -> dict[str, Any]:
        envelope = self._header("gorouter", 7, when, self.rng.choice(self.routers), "router")
        delta = self.rng.randrange(1, 100)
        envelope["counterEvent"] = {
            "name": "total_requests",
            "delta": delta,
            "total": 1_000_000 + when % 10**6,
        }
        return envelope


@dataclass
class Workload:
    """One synthetic batch: the apps, their snapshot, the envelopes and the Lambda event."""

    apps: dict[str, AppInfo]
    active: list[AppInfo]
    snapshot: bytes
    envelopes: list[bytes]
    kinds: Counter[str]
    event: dict[str, Any]
    event_bytes: int

    @property
    def records(self) -> int:
        return len(self.envelopes)

    @property
    def value_bytes(self) -> int:
        return sum(map(len, self.envelopes))

    @property
    def expected_points(self) -> int:
        return self.records - self.kinds["value_metric"] - self.kinds["counter_event"]

    def describe(self) -> str:
        mix = ", ".join(f"{self.kinds[name]} {name}" for name, _ in _MIX)
        return (
            f"{num(self.records)} records ({mix})"
            f" from {len(self.active)} of {num(len(self.apps))} apps;"
            f" envelopes {mib(self.value_bytes)} (mean {self.value_bytes / self.records:.0f} B),"
            f" Lambda event {mib(self.event_bytes)}"
        )


def event_size(event: Mapping[str, Any]) -> int:
    return len(json.dumps(event, separators=(",", ":")))


def build_workload(records: int, snapshot_apps: int, active_apps: int, seed: int = 1) -> Workload:
    apps = foundation_for(snapshot_apps, seed=seed).app_infos()
    chooser = random.Random(seed)
    active = chooser.sample(sorted(apps.values(), key=lambda a: a.guid), min(active_apps, len(apps)))
    envelopes, kinds = TrafficGenerator(active, seed=seed).envelopes(records)
    event = build_kafka_event(envelopes, partitions=4)
    return Workload(apps, active, snapshot_of(apps), envelopes, kinds, event, event_size(event))


def max_size_event(budget: int, seed: int = 2) -> tuple[dict[str, Any], int, int]:
    """The largest batch of the same traffic whose Lambda event is at most ``budget`` bytes:
    (event, its size, records)."""
    apps = foundation_for(1_000, seed=seed).app_infos()
    active = random.Random(seed).sample(sorted(apps.values(), key=lambda a: a.guid), 400)
    envelopes, _ = TrafficGenerator(active, seed=seed).envelopes(max(100, budget // 600))
    sizes = [event_size(build_kafka_event([v], partitions=1)) for v in envelopes[:200]]
    count = int(len(envelopes) * 0.9)
    while True:
        event = build_kafka_event(envelopes[:count], partitions=4)
        size = event_size(event)
        if size <= budget:
            break
        count -= max(1, int((size - budget) / statistics.mean(sizes)))
    return event, size, count


_FAKE_CC_CHILD = """\
import sys
from refinery_tools.dev.workload import CC_SECRET, foundation_for
from refinery_tools.dev.fake_cc import FakeCloudController
foundation = foundation_for(int(sys.argv[1]), seed=7)
with FakeCloudController(foundation, client_id="refinery", client_secret=CC_SECRET) as cc:
    print(cc.url, flush=True)
    sys.stdin.read()
"""


@contextlib.contextmanager
def fake_cloud_controller(apps: int) -> Iterator[str]:
    """A :class:`FakeCloudController` serving ``apps`` apps in a child process (so it does not share
    this process's GIL, as a real Cloud Controller would not); yields its URL."""
    with tempfile.TemporaryFile() as log:
        child = subprocess.Popen(
            [sys.executable, "-c", _FAKE_CC_CHILD, str(apps)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
        )
        try:
            assert child.stdout is not None
            url = child.stdout.readline().strip()
            if not url.startswith("http://"):
                child.wait(timeout=15)
                log.seek(0)
                raise RuntimeError(f"the fake Cloud Controller did not start: {log.read().decode()[-2000:]}")
            yield url
        finally:
            if child.stdin is not None:
                with contextlib.suppress(OSError):
                    child.stdin.close()
            try:
                child.wait(timeout=15)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait(timeout=15)
            if child.stdout is not None:
                child.stdout.close()
