"""The compiled fast path (``refinery._record_fastpath``) against the pure-Python reference.

The contract of :func:`convert_value`: for a Kafka record value it returns exactly what the
reference gives — ``decode_value`` then ``convert``: the same ``(line, timestamp)`` byte for byte, or
the very same ``Dropped`` object — or ``None`` ("not handled, take the reference path"). It never
answers for a record the reference quarantines, and it calls ``lookup`` at most once, never when it
returns ``None`` (and, when it answers, exactly as the reference does).

Every check goes through :func:`check`. The records come from the bundled samples, the benchmark's
synthetic traffic, hypothesis-generated envelopes of the three kinds, and JSON- and byte-level
mutations of valid records. A few tests also require the fast path to *answer* (the common records,
well-formed records with junk in fields it does not read): otherwise the speed-up would be fake.
"""

from __future__ import annotations

import base64
import copy
import json
import os
import random
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any, NamedTuple

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from refinery import pipeline, speedups
from refinery.batch import BatchPoints
from refinery.convert import (
    DROP_COUNTER_EVENT,
    DROP_LOG_SOURCE,
    DROP_NO_APP_ID,
    DROP_UNKNOWN_APP,
    DROP_VALUE_METRIC,
    AppTags,
    Dropped,
    convert,
)
from refinery.envelope import (
    INT64_MAX,
    INT64_MIN,
    MAX_VALUE_BYTES,
    UINT64_MAX,
    Poison,
    decode_value,
)
from refinery.identity import stamp_line
from refinery.metadata.snapshot import AppInfo
from refinery_tools.dev import workload
from refinery_tools.dev.envelopes import container_envelope, guid_to_uuid, http_envelope
from refinery_tools.dev.samples import SAMPLE_APP, sample_envelopes
from refinery_tools.events import build_kafka_event
from support.unavailable import unavailable

INT32_MAX, INT32_MIN = (1 << 31) - 1, -(1 << 31)
NS = 1_000_000_000
MAX_VALUE_CHARS = MAX_VALUE_BYTES * 4 // 3 + 4
HYPOTHESIS = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# ----------------------------------------------------------------------------- the implementations

Convert = Callable[[Any, Callable[[str], Any]], Any]


def load_fast_path() -> Convert:
    """The compiled ``convert_value``; skipped when it is not built, failed under ``CI=true``."""
    try:
        from refinery._record_fastpath import convert_value
    except ImportError as exc:
        reason = (
            f"refinery._record_fastpath is not importable ({exc}); refinery.speedups runs "
            f"{speedups.IMPLEMENTATION!r} ({speedups.UNAVAILABLE_REASON}). Build it with `pip install -e .`"
        )
        unavailable(reason)
    return convert_value


@pytest.fixture(scope="module")
def fast() -> Convert:
    return load_fast_path()


class Poisoned(NamedTuple):
    """The reference quarantines the record."""

    reason: str
    detail: str


def reference(value: Any, lookup: Callable[[str], Any]) -> Any:
    """What the pure-Python path gives: a point, a ``Dropped``, or the :class:`Poisoned` reason."""
    try:
        return convert(decode_value(value), lookup)
    except Poison as exc:
        return Poisoned(exc.reason, exc.detail)


class Lookup:
    """A metadata lookup over a fixed set of apps that records every call."""

    def __init__(self, apps: dict[str, AppTags]):
        self.apps = apps
        self.calls: list[str] = []

    def __call__(self, guid: str) -> AppTags | None:
        self.calls.append(guid)
        return self.apps.get(guid)


# A second app whose names need escaping in tags (space, comma, equals, non-ASCII, backslash).
ODD_APP = AppInfo(
    guid="0f0e0d0c-0b0a-0908-0706-050403020100",
    name="my app,v=2 ü\\",
    space_guid="5e2b7c90-8d13-4f6a-b2c4-000000000001",
    space_name="déve lop",
    org_guid="a0d9f3b2-6c41-4e8a-9f57-000000000002",
    org_name="a=c,m e",
)
KNOWN = {app.guid: AppTags.from_info(app) for app in (SAMPLE_APP, ODD_APP)}
UNKNOWN: dict[str, AppTags] = {}


def describe(value: Any) -> str:
    if isinstance(value, str):
        try:
            return repr(base64.b64decode(value, validate=True)[:400])
        except ValueError:
            pass
    return repr(value)[:400]


def check(fast: Convert, value: Any, apps: dict[str, AppTags] = KNOWN) -> Any:
    """The fast path's outcome for ``value`` (None: not handled), checked against the reference."""
    spy = Lookup(apps)
    got = fast(value, spy)
    if got is None:
        assert spy.calls == [], (
            f"lookup called ({spy.calls}) though the fast path declined: {describe(value)}"
        )
        return None
    assert len(spy.calls) <= 1, f"lookup called {len(spy.calls)} times: {describe(value)}"
    ref_spy = Lookup(apps)
    want = reference(value, ref_spy)
    assert not isinstance(want, Poisoned), (
        f"the fast path answered {got!r} for a record the reference quarantines ({want}): {describe(value)}"
    )
    if type(want) is Dropped:
        assert got is want, f"fast {got!r} != reference {want!r}: {describe(value)}"
    else:
        assert type(got) is tuple and len(got) == 2, f"not a point: {got!r}"
        assert type(got[0]) is str and type(got[1]) is int, f"not a (str, int) point: {got!r}"
        assert got[0] == want[0], f"line differs for {describe(value)}\nfast: {got[0]}\nref:  {want[0]}"
        assert got[1] == want[1], f"timestamp differs for {describe(value)}: {got[1]} != {want[1]}"
    assert spy.calls == ref_spy.calls, f"lookups differ: fast {spy.calls}, reference {ref_spy.calls}"
    for modulus in (1000, 1_000_000):  # the point at its identity time: as refinery.identity computes it
        stamped = fast(value, Lookup(apps), modulus)  # type: ignore[call-arg]
        if type(want) is Dropped:
            # (declining before the lookup is allowed: a time at the ends of int64, for the reference)
            assert stamped is want or (stamped is None and want is DROP_UNKNOWN_APP), (
                f"modulus {modulus}: {stamped!r} != {want!r}: {describe(value)}"
            )
        elif stamped is None:  # declined only where a stamped time could leave int64 (the reference's job)
            assert not INT64_MIN + modulus <= want[1] <= INT64_MAX - modulus, describe(value)
        else:
            ref = stamp_line(want[0], want[1], base64.b64decode(value), modulus)
            assert stamped == ref, f"modulus {modulus}: {describe(value)}\nfast: {stamped}\nref:  {ref}"
    return got


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


# ----------------------------------------------------------------------------- JSON written to order


@dataclass(frozen=True)
class Raw:
    """JSON text written exactly as given (a number literal, an escaped key, invalid bytes...)."""

    data: bytes | str

    def encoded(self) -> bytes:
        return self.data if isinstance(self.data, bytes) else self.data.encode("utf-8", "surrogatepass")


class Obj(list):  # type: ignore[type-arg]
    """A JSON object as its (key, value) pairs, so that keys may repeat; ``json.loads`` hook."""


MISSING = object()
WHITESPACE = (b"", b" ", b"\n", b"\t", b"\r\n", b"  \t ")


@dataclass
class Style:
    rnd: random.Random | None = None
    ws: bool = False  # random JSON whitespace around every token
    shuffle: bool = False  # keys in a random order
    ascii: bool = False  # non-ASCII as \\u escapes
    go_floats: bool = False  # floats as Go writes them (1 for 1.0, 1e-07 ...)

    def pad(self) -> bytes:
        return self.rnd.choice(WHITESPACE) if self.ws and self.rnd else b""


COMPACT = Style()


def to_json(value: Any, style: Style = COMPACT) -> bytes:
    out: list[bytes] = []
    _write(value, style, out)
    return b"".join(out)


def _scalar(value: Any, style: Style) -> bytes:
    if type(value) is float and style.go_floats:
        return workload.go_float(value).encode()
    return json.dumps(value, ensure_ascii=style.ascii).encode("utf-8", "surrogatepass")


def _write(value: Any, style: Style, out: list[bytes]) -> None:
    if isinstance(value, Raw):
        out.append(value.encoded())
    elif isinstance(value, (dict, Obj)):
        items = list(value.items()) if isinstance(value, dict) else list(value)
        items = [(k, v) for k, v in items if v is not MISSING]
        if style.shuffle and style.rnd:
            style.rnd.shuffle(items)
        out.append(b"{")
        for i, (key, item) in enumerate(items):
            if i:
                out.append(b",")
            out.append(style.pad())
            out.append(key.encoded() if isinstance(key, Raw) else _scalar(key, style))
            out += [style.pad(), b":", style.pad()]
            _write(item, style, out)
            out.append(style.pad())
        out.append(b"}" if items else style.pad() + b"}")
    elif isinstance(value, list):
        out.append(b"[")
        for i, item in enumerate(value):
            if i:
                out.append(b",")
            out.append(style.pad())
            _write(item, style, out)
            out.append(style.pad())
        out.append(b"]")
    else:
        out.append(_scalar(value, style))


def parse(raw: bytes) -> Obj:
    return json.loads(raw, object_pairs_hook=Obj)


def escaped_key(key: str, at: int, upper: bool = False) -> Raw:
    """``"event\\u0054ype"``: the same key to a JSON parser, with one character as an escape."""
    code = f"\\u{ord(key[at]):04X}" if upper else f"\\u{ord(key[at]):04x}"
    return Raw(f'"{key[:at]}{code}{key[at + 1 :]}"')


def object_paths(value: Any, path: tuple[int, ...] = ()) -> Iterator[tuple[int, ...]]:
    """The path (pair indices) of every object in the document, the document first."""
    if isinstance(value, Obj):
        yield path
        for i, (_, item) in enumerate(value):
            yield from object_paths(item, (*path, i))


def at(doc: Obj, path: tuple[int, ...]) -> Obj:
    for i in path:
        doc = doc[i][1]
    return doc


def edited(doc: Obj, path: tuple[int, ...], edit: Callable[[Obj], None]) -> Obj:
    doc = copy.deepcopy(doc)
    edit(at(doc, path))
    return doc


# ----------------------------------------------------------------------------- the samples

SAMPLES = sample_envelopes()
SHARED_SAMPLES = Path(__file__).resolve().parents[3] / "shared" / "samples" / "nozzle-envelopes.jsonl"
SAMPLE_DOCS = [parse(raw) for raw in SAMPLES]
SAMPLE_KINDS = ["http", "app_log", "rtr_log", "container", "value_metric", "counter_event"]


def test_compiled_fast_path_is_what_the_pipeline_runs(fast: Convert) -> None:
    if os.environ.get("REFINERY_PURE_PYTHON", "").strip().lower() in ("1", "true", "yes"):
        pytest.skip("REFINERY_PURE_PYTHON is set: the pipeline runs the reference path on purpose")
    assert speedups.IMPLEMENTATION == "compiled", speedups.UNAVAILABLE_REASON
    from refinery import _record_fastpath

    assert speedups.convert_run is _record_fastpath.convert_run
    assert pipeline.convert_run is _record_fastpath.convert_run


def test_samples_are_answered_like_the_reference_with_known_and_unknown_apps(fast: Convert) -> None:
    assert len(SAMPLES) == 6
    if SHARED_SAMPLES.exists():  # the bundled copy is the shared reference file
        assert [line for line in SHARED_SAMPLES.read_bytes().splitlines() if line.strip()] == SAMPLES
    known = [check(fast, b64(raw), KNOWN) for raw in SAMPLES]
    assert all(outcome is not None for outcome in known), dict(zip(SAMPLE_KINDS, known, strict=True))
    assert [type(o) for o in known[:4]] == [tuple] * 4
    assert known[0][0].startswith("http_request,app=myapp,") and known[0][1] == 1537510364123456789
    assert ",type=OUT count=1i,size=93i " in known[1][0] and ",type=RTR count=1i," in known[2][0]
    assert known[3][0].startswith("instance,app=myapp,")
    assert known[4:] == [DROP_VALUE_METRIC, DROP_COUNTER_EVENT]

    unknown = [check(fast, b64(raw), UNKNOWN) for raw in SAMPLES]
    assert unknown == [DROP_UNKNOWN_APP] * 4 + [DROP_VALUE_METRIC, DROP_COUNTER_EVENT]
    assert all(a is b for a, b in zip(unknown[4:], known[4:], strict=True))


def test_samples_restyled_are_still_answered(fast: Convert) -> None:
    """Key order, whitespace anywhere, escaped non-ASCII: the same envelope, the same answer."""
    for seed in range(60):
        for doc, raw in zip(SAMPLE_DOCS, SAMPLES, strict=True):
            rnd = random.Random(seed)
            style = Style(rnd, ws=seed % 2 == 0, shuffle=seed % 3 != 0, ascii=seed % 5 == 0)
            value = b64(to_json(doc, style))
            assert check(fast, value) == check(fast, b64(raw)) is not None, value
    for raw in SAMPLES:  # whitespace before and after the document
        for pad in (b" ", b"\n", b"\r\n\t ", b" " * 100):
            assert check(fast, b64(pad + raw)) is not None
            assert check(fast, b64(raw + pad)) is not None
            assert check(fast, b64(pad + raw + pad)) is not None


# ----------------------------------------------------------------------------- the bench workload


def test_bench_workload_every_record_matches_and_99_percent_are_answered(fast: Convert) -> None:
    work = workload.build_workload(2000, 300, 100)
    store = workload.new_store(work.snapshot)
    workload.start_invocation(store)
    answered = total = 0
    kinds: Counter[str] = Counter()
    for batch in work.event["records"].values():
        for record in batch:
            value = record["value"]
            counted: list[str] = []

            def lookup(guid: str, counted: list[str] = counted) -> Any:
                counted.append(guid)
                return store.lookup(guid)

            got = fast(value, lookup)
            total += 1
            if got is None:
                assert counted == []
                continue
            answered += 1
            assert len(counted) <= 1
            looked_up: list[str] = []
            want = reference(value, lambda guid, seen=looked_up: seen.append(guid) or store.lookup(guid))
            assert not isinstance(want, Poisoned), want
            assert counted == looked_up
            if type(want) is Dropped:
                assert got is want
                kinds[want.reason] += 1
            else:
                assert got == want and type(got[0]) is str
                kinds[got[0].split(",", 1)[0]] += 1
    assert total == 2000
    assert answered >= 0.99 * total, f"the fast path answered only {answered} of {total} records"
    assert kinds["http_request"] and kinds["log"] and kinds["instance"], kinds


# ----------------------------------------------------------------------------- generated envelopes

I32_EDGES = [0, 1, -1, INT32_MAX, INT32_MIN]
I32_BEYOND = [INT32_MAX + 1, INT32_MIN - 1, INT64_MAX, INT64_MIN, UINT64_MAX]
I64_EDGES = [0, 1, -1, INT64_MAX, INT64_MIN, INT64_MAX - 1, INT64_MIN + 1, (1 << 53) + 1, 1537510364123456789]
I64_BEYOND = [INT64_MAX + 1, INT64_MIN - 1, UINT64_MAX, UINT64_MAX + 1, -UINT64_MAX, 10**30]
U64_EDGES = [0, 1, (1 << 32) - 1, 1 << 32, INT64_MAX, 1 << 63, UINT64_MAX - 1, UINT64_MAX]
U64_BEYOND = [-1, UINT64_MAX + 1, -(1 << 63), 10**25]
# JSON number texts a parser reads as something other than a plain int (or refuses).
NUMBER_TEXTS = [
    "-0", "0.0", "-0.0", "1.0", "1.5", "1e2", "1E+2", "1e-2", "1E-400", "1e400", "-1e400",
    "01", "1.", ".5", "1e", "-", "+1", "0x10", "1.5e+", "--1", "1..2", "NaN", "Infinity", "-Infinity",
    "123456789012345678901234567890", "18446744073709551616", "-9223372036854775809",
]  # fmt: skip
WRONG = st.one_of(
    st.text(max_size=6),
    st.floats(),
    st.booleans(),
    st.none(),
    st.sampled_from([{}, {"a": 1}, [], [1, "x"], "1", "", "0"]),
    st.integers(-10, 10),
    st.sampled_from(NUMBER_TEXTS).map(Raw),
)
JUNK = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8,
)
RAW_JUNK = [
    '"a\\u0026b"', '"\\ud83d\\ude00"', '"\\ud800"', '"\\udc00\\ud800"', '"\\"\\\\\\/\\b\\f\\n\\r\\t"',
    '"\\u0000"', '"\\x"', '"\\u12"', "[1,]", '{"a":1,}', "[[[[[]]]]]", "[" * 70 + "]" * 70, "nul", "NaN",
]  # fmt: skip
RAW_JUNK_BYTES = [b'"\xff"', b'"\xc3"', b'"\xc0\xaf"', b'"\xe0\x80\xaf"', b'"\xed\xa0\x80"', b'"\x01"']


def durations() -> st.SearchStrategy[int]:
    return st.one_of(
        st.sampled_from([0, 1, 99_999, 100_000, 999_999_999, NS, NS + 1, 2 * NS - 1, -1, -NS, -NS - 1]),
        st.integers(0, NS - 1),
        st.integers(-3 * NS, 3 * NS),
        st.integers(INT64_MIN, INT64_MAX),
    )


@st.composite
def field(draw: Any, good: st.SearchStrategy[Any], edgy: st.SearchStrategy[Any], clean: bool) -> Any:
    """Mostly a good value; unless ``clean``, sometimes an edge case, a wrong type or missing."""
    if clean:
        return draw(good)
    choice = draw(st.integers(0, 5))
    if choice <= 2:
        return draw(good)
    if choice == 3:
        return draw(edgy)
    if choice == 4:
        return draw(WRONG)
    return MISSING


def ints(lo: int, hi: int, edges: list[int]) -> st.SearchStrategy[int]:
    return st.one_of(st.sampled_from([e for e in edges if lo <= e <= hi]), st.integers(lo, hi))


def i64(clean: bool) -> st.SearchStrategy[Any]:
    return field(ints(INT64_MIN, INT64_MAX, I64_EDGES), st.sampled_from(I64_BEYOND), clean)


def i32(clean: bool, *common: int) -> st.SearchStrategy[Any]:
    return field(ints(INT32_MIN, INT32_MAX, [*common, *I32_EDGES]), st.sampled_from(I32_BEYOND), clean)


@st.composite
def app_guid(draw: Any) -> str:
    return draw(
        st.one_of(
            st.sampled_from(sorted(KNOWN)),
            st.sampled_from(sorted(KNOWN)),
            st.uuids().map(str),
            st.sampled_from(["", "not-a-guid", SAMPLE_APP.guid.upper(), "x y", "a,b=c"]),
        )
    )


@st.composite
def pairs_with_trouble(draw: Any, obj: Obj, value: st.SearchStrategy[Any], clean: bool) -> Obj:
    """Unless ``clean``: sometimes a key written twice, a key with an escape, a junk member."""
    obj = Obj((k, v) for k, v in obj if v is not MISSING)
    if clean or not obj:
        if draw(st.integers(0, 3)) == 0:  # an extra member the fast path does not read
            obj.insert(draw(st.integers(0, len(obj))), (draw(st.sampled_from(["junk", "x", ""])), draw(JUNK)))
        return obj
    trouble = draw(st.integers(0, 7))
    i = draw(st.integers(0, len(obj) - 1))
    key, item = obj[i]
    if trouble == 0:  # duplicate key, the same or another value
        again = draw(st.one_of(st.just(item), value, WRONG))
        obj.insert(draw(st.integers(0, len(obj))), (key, again))
    elif trouble == 1 and isinstance(key, str) and key:
        obj[i] = (escaped_key(key, draw(st.integers(0, len(key) - 1)), draw(st.booleans())), item)
    elif trouble == 2:
        junk = draw(JUNK | st.sampled_from(RAW_JUNK).map(Raw) | st.sampled_from(RAW_JUNK_BYTES).map(Raw))
        obj.insert(draw(st.integers(0, len(obj))), (draw(st.text(max_size=4)), junk))
    return obj


@st.composite
def envelope(draw: Any, event_type: int, body_key: str, body: Obj, clean: bool, timestamp: Any) -> Obj:
    other_types = st.sampled_from([4, 5, 6, 7, 8, 9, 0, 3, 10, -1, 1 << 62, 1 << 63])
    kind = field(st.just(event_type), other_types, clean)
    doc = Obj(
        [
            ("origin", "rep"),
            ("eventType", draw(kind)),
            ("timestamp", timestamp),
            ("deployment", "cf"),
            (body_key, draw(field(st.just(body), WRONG, clean))),
        ]
    )
    return draw(pairs_with_trouble(doc, st.integers(), clean))


@st.composite
def http_documents(draw: Any) -> Obj:
    clean = draw(st.booleans())
    start = draw(i64(clean))
    if type(start) is int and draw(st.integers(0, 4)):
        stop: Any = start + draw(durations())  # may leave the int64 range
    else:
        stop = draw(i64(clean))
    if draw(st.integers(0, 9)) == 0:
        start, stop = draw(st.sampled_from([(INT64_MIN, INT64_MAX), (INT64_MAX, INT64_MIN), (-1, INT64_MAX)]))
    u64 = ints(0, UINT64_MAX, U64_EDGES)
    guid = draw(app_guid())
    uuid: Any = Obj(guid_to_uuid(guid).items()) if guid and "-" in guid and len(guid) == 36 else Obj()
    if not clean and draw(st.integers(0, 2)) == 0:
        uuid = Obj(
            [
                ("low", draw(field(u64, st.sampled_from(U64_BEYOND), clean))),
                ("high", draw(field(u64, st.sampled_from(U64_BEYOND), clean))),
            ]
        )
    uuid = draw(pairs_with_trouble(uuid, u64, clean))
    body = Obj(
        [
            ("startTimestamp", start),
            ("stopTimestamp", stop),
            ("requestId", Obj([("low", 1), ("high", 2)])),
            ("peerType", 1),
            ("method", draw(field(ints(-1, 46, I32_EDGES), st.sampled_from(I32_BEYOND), clean))),
            ("uri", draw(st.sampled_from(["http://a/?p=2&s=1", "http://app.example.com/", "é/ü"]))),
            ("statusCode", draw(i32(clean, 200, 404))),
            ("contentLength", draw(i64(clean))),
            ("applicationId", draw(field(st.just(uuid), WRONG, clean))),
            ("instanceIndex", draw(i32(clean))),
        ]
    )
    body = draw(pairs_with_trouble(body, st.integers(), clean))
    stamp = draw(i64(clean))
    return draw(envelope(4, "httpStartStop", body, clean, stamp))


SOURCE_TYPES = ["APP/PROC/WEB", "APP", "App", "APP/TASK/x", "RTR", "RTR/0", "STG", "CELL", "", "app", "AP"]
INSTANCES = ["0", "1", "12", "", " ", "a b", "x,y=z", "i=1", "é", "tab\there", "new\nline", "back\\", "ü ,="]


@st.composite
def log_documents(draw: Any) -> Obj:
    clean = draw(st.booleans())
    message = st.one_of(
        st.binary(max_size=40).map(b64),
        st.sampled_from(["", "AAAA", "AAA=", "AA==", "A===", "====", "AB"]),
    )
    message_type = field(st.sampled_from([1, 2]), st.sampled_from([0, 3, -1, *I32_BEYOND]), clean)
    odd_sources = st.sampled_from(["APPé", "APP\u0000", "RTR\n"]) | st.text(max_size=5)
    ascii_text = st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=6)
    instance = field(st.sampled_from(INSTANCES) | ascii_text, st.text(max_size=6), clean)
    body = Obj(
        [
            ("message", draw(field(message, st.text(max_size=9), clean))),
            ("message_type", draw(message_type)),
            ("timestamp", draw(i64(clean))),
            ("app_id", draw(field(app_guid(), st.text(max_size=6), clean))),
            ("source_type", draw(field(st.sampled_from(SOURCE_TYPES), odd_sources, clean))),
            ("source_instance", draw(instance)),
        ]
    )
    body = draw(pairs_with_trouble(body, st.integers(), clean))
    stamp = draw(field(ints(INT64_MIN, INT64_MAX, I64_EDGES), WRONG, clean))
    return draw(envelope(5, "logMessage", body, clean, stamp))


CPU_EDGES = [0.0, -0.0, 5e-324, 2.2250738585072014e-308, 1e-7, 0.5, 1.0, 100.0, 1e16, 1.7976931348623157e308]


@st.composite
def container_documents(draw: Any) -> Obj:
    clean = draw(st.booleans())
    cpu = st.one_of(st.sampled_from(CPU_EDGES), st.floats(allow_nan=False, allow_infinity=False))
    cpu_edgy = st.one_of(st.integers(), st.sampled_from([float("nan"), float("inf"), -float("inf"), 10**400]))
    size = st.one_of(st.just(0), st.integers(0, 1 << 40), ints(0, INT64_MAX, I64_EDGES))
    size_edgy = st.sampled_from([-1, INT64_MIN, *I64_BEYOND])
    body = Obj(
        [
            ("applicationId", draw(field(app_guid(), st.text(max_size=6), clean))),
            ("instanceIndex", draw(i32(clean))),
            ("cpuPercentage", draw(field(cpu, cpu_edgy, clean))),
            ("memoryBytes", draw(field(size, size_edgy, clean))),
            ("diskBytes", draw(field(size, size_edgy, clean))),
            ("memoryBytesQuota", draw(field(size, size_edgy, clean))),
            ("diskBytesQuota", draw(field(size, size_edgy, clean))),
        ]
    )
    body = draw(pairs_with_trouble(body, st.integers(), clean))
    stamp = draw(i64(clean))
    return draw(envelope(9, "containerMetric", body, clean, stamp))


@st.composite
def styles(draw: Any) -> Style:
    return Style(
        draw(st.randoms(use_true_random=False)),
        ws=draw(st.booleans()),
        shuffle=draw(st.booleans()),
        ascii=draw(st.booleans()),
        go_floats=draw(st.booleans()),
    )


def check_document(fast: Convert, doc: Obj, style: Style) -> None:
    value = b64(to_json(doc, style))
    check(fast, value, KNOWN)
    check(fast, value, UNKNOWN)


@settings(HYPOTHESIS, max_examples=700)
@given(doc=http_documents(), style=styles())
def test_generated_http_envelopes(fast: Convert, doc: Obj, style: Style) -> None:
    check_document(fast, doc, style)


@settings(HYPOTHESIS, max_examples=700)
@given(doc=log_documents(), style=styles())
def test_generated_log_envelopes(fast: Convert, doc: Obj, style: Style) -> None:
    check_document(fast, doc, style)


@settings(HYPOTHESIS, max_examples=700)
@given(doc=container_documents(), style=styles())
def test_generated_container_envelopes(fast: Convert, doc: Obj, style: Style) -> None:
    check_document(fast, doc, style)


def test_generated_clean_envelopes_are_answered(fast: Convert) -> None:
    """Well-typed records of the three kinds, any key order and whitespace: all answered."""
    rnd = random.Random(7)
    for i in range(600):
        guid = rnd.choice([SAMPLE_APP.guid, ODD_APP.guid, "1d2e3f40-0000-4000-8000-000000000000"])
        start = rnd.randrange(INT64_MIN, INT64_MAX - 10 * NS)
        http = Obj(
            [
                ("eventType", 4),
                ("timestamp", start),
                (
                    "httpStartStop",
                    Obj(
                        [
                            ("startTimestamp", start),
                            ("stopTimestamp", start + rnd.randrange(-NS, 10 * NS)),
                            ("method", rnd.randrange(-5, 50)),
                            ("statusCode", rnd.randrange(INT32_MIN, INT32_MAX)),
                            ("contentLength", rnd.randrange(INT64_MIN, INT64_MAX)),
                            ("applicationId", Obj(guid_to_uuid(guid).items())),
                            ("instanceIndex", rnd.randrange(INT32_MIN, INT32_MAX)),
                        ]
                    ),
                ),
            ]
        )
        log = Obj(
            [
                ("eventType", 5),
                (
                    "logMessage",
                    Obj(
                        [
                            ("message", b64(rnd.randbytes(rnd.randrange(50)))),
                            ("message_type", rnd.choice([1, 2])),
                            ("timestamp", rnd.randrange(INT64_MIN, INT64_MAX)),
                            ("app_id", guid),
                            ("source_type", rnd.choice(["APP/PROC/WEB", "App", "RTR", "APP"])),
                            ("source_instance", rnd.choice(["0", "7", "", "a b", "x,y=z"])),
                        ]
                    ),
                ),
            ]
        )
        container = Obj(
            [
                ("eventType", 9),
                ("timestamp", rnd.randrange(INT64_MIN, INT64_MAX)),
                (
                    "containerMetric",
                    Obj(
                        [
                            ("applicationId", guid),
                            ("instanceIndex", rnd.randrange(INT32_MIN, INT32_MAX)),
                            ("cpuPercentage", rnd.random() * 10 ** rnd.randrange(-8, 5) + 1e-12),
                            ("memoryBytes", rnd.randrange(0, 1 << rnd.randrange(1, 63))),
                            ("diskBytes", rnd.randrange(0, 1 << rnd.randrange(1, 63))),
                            (
                                "memoryBytesQuota",
                                rnd.choice([0, rnd.randrange(0, 1 << rnd.randrange(1, 63))]),
                            ),
                            ("diskBytesQuota", rnd.choice([0, rnd.randrange(0, 1 << rnd.randrange(1, 63))])),
                        ]
                    ),
                ),
            ]
        )
        style = Style(rnd, ws=i % 2 == 0, shuffle=i % 3 == 0)
        for doc in (http, log, container):
            value = b64(to_json(doc, style))
            assert check(fast, value, KNOWN) is not None, value
            assert check(fast, value, UNKNOWN) is not None, value


# ----------------------------------------------------------------------------- JSON-level mutations


def test_duplicate_keys_anywhere(fast: Convert) -> None:
    """Every key of every object written twice (the same value, another one, a wrong type), before or
    after the first: a JSON parser keeps the last, the fast path must agree or decline."""
    for doc in SAMPLE_DOCS:
        for path in object_paths(doc):
            obj = at(doc, path)
            for i, (key, item) in enumerate(obj):
                for again in (item, 0, 4, 1, "x", None, Obj(), [1]):
                    for where in (0, i, i + 1, len(obj)):
                        variant = edited(doc, path, lambda o, k=key, a=again, w=where: o.insert(w, (k, a)))
                        check(fast, b64(to_json(variant)))


def test_keys_written_with_escapes(fast: Convert) -> None:
    for doc in SAMPLE_DOCS:
        for path in object_paths(doc):
            for i, (key, _) in enumerate(at(doc, path)):
                for j in range(len(key)):
                    for upper in (False, True):

                        def escape(o: Obj, i: int = i, j: int = j, upper: bool = upper) -> None:
                            o[i] = (escaped_key(o[i][0], j, upper), o[i][1])

                        check(fast, b64(to_json(edited(doc, path, escape))))


JUNK_TEXTS_ANSWERED = [
    "[]", "{}", "[1,2,[3,{}]]", '{"a":{"b":[null,true,false,-0.5e-3]}}', '"plain"', '"a\\u0026b"',
    '"\\"\\\\\\/\\b\\f\\n\\r\\t"', '"\\u0000\\u00e9\\uFFFF"', '"é ü 漢字 😀"', '"\x7f"', "1E+2", "-0",
    "1e400", "123456789012345678901234567890", "[" * 30 + "]" * 30, '{"eventType":4,"logMessage":5}',
    "0", "7",
]  # fmt: skip
JUNK_TEXTS_OTHER = [
    "[" * 100 + "]" * 100, '{"a":' * 100 + "1" + "}" * 100, "[" * 63 + "]" * 63, "[" * 64 + "]" * 64,
    "[" * 2000 + "]" * 2000, '{"a":' * 1100 + "1" + "}" * 1100,
    '"\\ud83d\\ude00"', '"\\ud800"', '"\\udc00"', '"\\ud800x"', "NaN", "Infinity", "-Infinity",
    "[1,]", '{"a":1,}', "[1 2]", '{"a" 1}', '{"a":}', "01", "1.", ".5", "1e", "-", "+1", "0x1", "tru",
    "nul", "'x'", '"\\x"', '"\\u12g4"', '"abc', "",
]  # fmt: skip
JUNK_BYTES = [
    b'"\xff"', b'"\xc3"', b'"\xc3("', b'"\xc0\xaf"', b'"\xc1\xbf"', b'"\xe0\x80\xaf"', b'"\xe0\x9f\xbf"',
    b'"\xed\xa0\x80"', b'"\xed\xbf\xbf"', b'"\xf0\x8f\xbf\xbf"', b'"\xf4\x90\x80\x80"', b'"\xf5\x80\x80\x80"',
    b'"\xf8"', b'"\x80"', b'"\x01"', b'"\x1f"', b'"\t"', b'"\n"', b'"\x00"', b"\xef\xbb\xbf1",
    b'"\xef\xbf\xbe"', b'"\xf0\x9f\x98\x80"', b'"\xf4\x8f\xbf\xbf"', b'"\xed\x9f\xbf"', b'"\xee\x80\x80"',
]  # fmt: skip


def junk_variants(doc: Obj) -> Iterator[tuple[bytes | str, bytes]]:
    """The document with a junk member inserted in each of its objects, at the start and the end."""
    for path in object_paths(doc):
        for text in (*JUNK_TEXTS_ANSWERED, *JUNK_TEXTS_OTHER, *JUNK_BYTES):
            for where in (0, len(at(doc, path))):
                variant = edited(doc, path, lambda o, t=text, w=where: o.insert(w, ("junk", Raw(t))))
                yield text, to_json(variant)


def test_junk_in_fields_not_read(fast: Convert) -> None:
    """Nested, unicode, escaped, invalid junk: checked against the reference; valid junk that the fast
    path documents as handled (no surrogate escapes, depth within 64) must still be answered."""
    for doc in SAMPLE_DOCS:
        for text, raw in junk_variants(doc):
            outcome = check(fast, b64(raw))
            if text in JUNK_TEXTS_ANSWERED:
                assert outcome is not None, raw


def test_number_and_literal_texts_in_every_field(fast: Convert) -> None:
    """Each member's value replaced by an odd number text or literal (valid or not JSON)."""
    texts = [
        *NUMBER_TEXTS, "true", "false", "null", '""', '"x"', "{}", "[]", '{"low":1}', '"\\u0041PP/1"',
        '"APP"', '"RTR"', '"0"', "2147483648", "-2147483649", "9223372036854775808", "0", "1", "9",
    ]  # fmt: skip
    for doc in SAMPLE_DOCS:
        for path in object_paths(doc):
            for i in range(len(at(doc, path))):
                for text in texts:

                    def replace(o: Obj, i: int = i, text: str = text) -> None:
                        o[i] = (o[i][0], Raw(text))

                    check(fast, b64(to_json(edited(doc, path, replace))))


def test_syntax_errors_around_the_document(fast: Convert) -> None:
    for raw in SAMPLES:
        variants = [
            raw[:-1] + b",}",  # trailing comma in the envelope
            raw[:-2] + b",}}",  # trailing comma in the body
            raw.replace(b"}", b",}", 1),
            raw.replace(b"]", b",]", 1),
            raw.replace(b":", b" : ", 3),
            raw.replace(b",", b" ,\n", 5),
            raw + b"x", raw + b"}", raw + b",", raw + b"\x00", raw + b" {}", raw + raw, b"x" + raw,
            raw + b"\xef\xbb\xbf", b"\xef\xbb\xbf" + raw, b"\x00" + raw, b"\x0b" + raw, b"\x0c" + raw,
            raw[:-1], raw[1:], b"[" + raw + b"]", b"{" + raw, raw.replace(b'"', b"'"),
        ]  # fmt: skip
        for variant in variants:
            check(fast, b64(variant))
    not_envelopes = [
        b"", b" ", b"\n", b"{}", b"[]", b"[{}]", b'"x"', b"4", b"null", b"true", b'{"eventType":4}',
        b'{"eventType":5}', b'{"eventType":9,"timestamp":1}', b'{"eventType":6}', b'{"eventType":"6"}',
        b'{"eventType":6.0}', b'{"eventType":null}', b'{"eventType":-0}', b'{"eventType":8}',
        b'{"eventType":9,"timestamp":1,"containerMetric":1}', b'{"eventType":5,"logMessage":1}',
        b'{"eventType":4,"httpStartStop":1}', b'{"eventType":9,"timestamp":1,"containerMetric":[]}',
    ]  # fmt: skip
    for text in not_envelopes:
        outcome = check(fast, b64(text))
        if text in (b'{"eventType":6}', b'{"eventType":8}', b'{"eventType":-0}'):
            assert outcome is not None, text


def test_truncated_documents_at_every_byte(fast: Convert) -> None:
    for raw in SAMPLES:
        for n in range(len(raw)):
            assert check(fast, b64(raw[:n])) is None, raw[:n]
        # the base64 text cut short too (mostly not base64 at all)
        value = b64(raw)
        for n in range(0, len(value), 3):
            check(fast, value[:n])


FLIP_BYTES = (0x22, 0x5C, 0x7B, 0x7D, 0x2C, 0x30, 0x20, 0x00, 0xFF, 0x65)


def test_byte_substitutions_at_every_position(fast: Convert) -> None:
    for raw in SAMPLES:
        for i in range(len(raw)):
            for byte in FLIP_BYTES:
                if raw[i] != byte:
                    check(fast, b64(raw[:i] + bytes([byte]) + raw[i + 1 :]))


@settings(HYPOTHESIS, max_examples=1500)
@given(
    index=st.integers(0, len(SAMPLES) - 1),
    flips=st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), min_size=1, max_size=3),
)
def test_random_byte_flips(fast: Convert, index: int, flips: list[tuple[int, int]]) -> None:
    raw = bytearray(SAMPLES[index])
    for position, byte in flips:
        raw[position % len(raw)] = byte
    check(fast, b64(bytes(raw)), KNOWN)
    check(fast, b64(bytes(raw)), UNKNOWN)


# ----------------------------------------------------------------------------- values that are not JSON


def test_values_that_are_not_base64_or_not_strings(fast: Convert) -> None:
    value = b64(SAMPLES[0])
    not_base64 = [
        value[:-1], value + "=", value + "A", value + "\n", " " + value, value.replace("A", "-", 1),
        value.replace("A", "_", 1), value[:8] + "=" + value[9:], "====", "A===", "AA=A", "=AAA", "é",
        base64.urlsafe_b64encode(SAMPLES[0]).decode() + "+/", value + "====",
    ]  # fmt: skip
    for bad in not_base64:
        check(fast, bad)
        if isinstance(reference(bad, Lookup(KNOWN)), Poisoned):
            assert fast(bad, Lookup(KNOWN)) is None
    not_text = (
        None,
        SAMPLES[0],
        value.encode(),
        bytearray(value.encode()),
        4,
        4.0,
        [value],
        {"value": value},
    )
    for bad in not_text:
        spy = Lookup(KNOWN)
        assert fast(bad, spy) is None and spy.calls == [], bad
        assert isinstance(reference(bad, Lookup(KNOWN)), Poisoned)

    class Text(str):
        pass

    spy = Lookup(KNOWN)
    assert fast(Text(value), spy) in (None, reference(Text(value), Lookup(KNOWN)))


@settings(HYPOTHESIS, max_examples=300)
@given(
    text=st.one_of(st.text(), st.text(alphabet="ABCDabcd0189+/=", max_size=40)),
    raw=st.binary(max_size=60) | st.sampled_from([raw[: len(raw) // 2] for raw in SAMPLES]),
)
def test_arbitrary_text_and_bytes_never_raise(fast: Convert, text: str, raw: bytes) -> None:
    check(fast, text)
    check(fast, b64(raw))


def test_size_limit(fast: Convert) -> None:
    """A value of MAX_VALUE_BYTES * 4 // 3 + 4 characters is read, a longer one quarantined."""
    doc = parse(SAMPLES[1])
    fits = MAX_VALUE_CHARS // 4 * 3  # the most bytes whose base64 is within the limit
    for size, within in ((fits, True), (fits + 1, False), (fits + 3, False), (fits - 1, True)):
        pad = size - len(to_json(doc)) - len(b',"junk":""')
        raw = to_json(Obj([*doc, ("junk", "x" * pad)]))
        assert len(raw) == size
        value = b64(raw)
        assert (len(value) <= MAX_VALUE_CHARS) is within
        outcome = check(fast, value)
        if within:
            assert outcome is not None
            assert outcome == check(fast, b64(SAMPLES[1]))
        else:
            assert outcome is None
            assert reference(value, Lookup(KNOWN)).reason == "too_large"
    big = "A" * (MAX_VALUE_CHARS + 1000)
    assert fast(big, Lookup(KNOWN)) is None


# ----------------------------------------------------------------------------- lookup discipline


def test_lookup_is_called_at_most_once_and_never_when_declined(fast: Convert) -> None:
    corpus: list[str] = []
    for raw in SAMPLES:
        corpus.append(b64(raw))
        corpus += [b64(raw[:n]) for n in range(0, len(raw), 7)]
        corpus += [b64(raw.replace(b"1", b"x", 1)), b64(raw.replace(b"}", b",}", 1))]
    work = workload.build_workload(300, 50, 20, seed=3)
    corpus += [record["value"] for batch in work.event["records"].values() for record in batch]
    answered = declined = 0
    for value in corpus:
        for apps in (KNOWN, UNKNOWN):
            spy = Lookup(apps)
            got = fast(value, spy)
            if got is None:
                declined += 1
                assert spy.calls == [], describe(value)
            else:
                answered += 1
                assert len(spy.calls) <= 1, describe(value)
                if type(got) is tuple or got is DROP_UNKNOWN_APP:
                    assert len(spy.calls) == 1  # the point needs the app's tags
                elif got in (DROP_NO_APP_ID, DROP_LOG_SOURCE, DROP_VALUE_METRIC, DROP_COUNTER_EVENT):
                    assert spy.calls == []
            check(fast, value, apps)
    assert answered and declined

    def explode(guid: str) -> AppTags:
        raise AssertionError(f"lookup({guid!r}) for a record the fast path declines")

    for raw in SAMPLES:
        for n in range(len(raw)):
            assert fast(b64(raw[:n]), explode) is None


# ----------------------------------------------------------------------------- float formatting


CONTAINER_TEMPLATE = (
    '{"origin":"rep","eventType":9,"timestamp":%d,"containerMetric":{"applicationId":"%s","instanceIndex":1,'
    '"cpuPercentage":%s,"memoryBytes":%d,"diskBytes":%d,"memoryBytesQuota":%d,"diskBytesQuota":%d}}'
)


def duration_text(line: str) -> str:
    return line.split(",duration=", 1)[1].split(",", 1)[0]


def test_http_durations_format_like_the_reference(fast: Convert) -> None:
    rnd = random.Random(20240601)
    below = [0, 1, 9, 10, 99, 100, 99_999, 100_000, 100_001, 999_999, 999_999_999, 500_000_000, 123_456_789]
    below += [10**k for k in range(9)] + [rnd.randrange(NS) for _ in range(20_000)]
    below += [rnd.randrange(10 ** rnd.randrange(1, 10)) for _ in range(2_000)]
    start = 1537510364123456789
    other = [NS, NS + 1, 2 * NS - 1, -1, -NS, -NS - 1, INT64_MAX - start, INT64_MIN - start]
    other += [rnd.randrange(-(10**12), 10**13) for _ in range(2_000)]
    for elapsed in below + other:
        value = b64(http_envelope(SAMPLE_APP.guid, start, duration_ns=elapsed, method="PUT", status=503))
        got = check(fast, value)
        assert got is not None, elapsed
        if 0 <= elapsed < NS:  # an independent oracle: the exact decimal of elapsed / 10**9
            assert Decimal(duration_text(got[0])) == Decimal(elapsed) / NS, (elapsed, got[0])
    for begin, end in ((INT64_MIN, INT64_MAX), (INT64_MAX, INT64_MIN), (-1, INT64_MAX), (1, INT64_MIN)):
        value = b64(http_envelope(ODD_APP.guid, begin, duration_ns=end - begin))
        assert check(fast, value) is not None  # the difference overflows int64: Go saturates


def test_container_ratios_and_cpu_format_like_the_reference(fast: Convert) -> None:
    rnd = random.Random(99)
    answered = 0
    for i in range(20_000):
        memory_quota = rnd.choice([0, 1, rnd.randrange(1, 1 << rnd.randrange(1, 63))])
        disk_quota = rnd.choice([0, 3, rnd.randrange(1, 1 << rnd.randrange(1, 63))])
        memory = rnd.randrange(0, 1 << rnd.randrange(1, 63))
        disk = rnd.choice([0, rnd.randrange(0, 1 << rnd.randrange(1, 63))])
        scaled = rnd.random() * 10 ** rnd.randrange(-10, 20)
        cpu = rnd.choice([scaled, rnd.uniform(-1, 1e3), rnd.choice(CPU_EDGES), rnd.random()])
        if i % 2:  # the float as the nozzle (Go) writes it: 1 for 1.0, 1e-07 ...
            fields = (i, SAMPLE_APP.guid, workload.go_float(cpu), memory, disk, memory_quota, disk_quota)
            value = b64((CONTAINER_TEMPLATE % fields).encode())
        else:
            sizes = {"memory": memory, "disk": disk, "memory_quota": memory_quota, "disk_quota": disk_quota}
            value = b64(container_envelope(SAMPLE_APP.guid, i, cpu=cpu, **sizes))
        answered += check(fast, value) is not None
    assert answered >= 19_000, answered  # only whole floats written by Go as ints may be declined


# ----------------------------------------------------------------------------- the whole batch


def batch_event() -> tuple[dict[str, Any], bytes]:
    """Benchmark traffic, the samples, duplicates, mutated and poison records, in one event."""
    work = workload.build_workload(1000, 200, 80, seed=5)
    extra: list[bytes] = list(SAMPLES) + list(work.envelopes[:20])  # identical records: duplicate points
    extra += [raw[: len(raw) // 2] for raw in SAMPLES] + [raw.replace(b"}", b",}", 1) for raw in SAMPLES]
    extra += [raw.replace(b"1", b"1.5", 1) for raw in SAMPLES]
    extra += [SAMPLES[3].replace(b"0.4518379826149203", b"NaN"), b"[]", b"", b'{"eventType":4}']
    values = list(work.envelopes) + extra
    random.Random(5).shuffle(values)
    event = build_kafka_event(values, partitions=3)
    records = event["records"]["cf-firehose-0"]
    records += [{"value": "not base64!"}, {"value": None}, {"offset": 1}, "a string record", None]
    records.append({**records[0]})  # the same record again
    return event, work.snapshot


def test_transform_batch_is_the_same_with_and_without_the_fast_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """Whole runs of records in compiled code give what pure Python gives, with and without an age
    limit (MAX_RECORD_AGE_SECONDS: the run hands a too-old record back to be quarantined)."""
    from refinery import _record_fastpath

    load_fast_path()
    event, snapshot = batch_event()
    stamps = [
        r["timestamp"] for batch in event["records"].values() for r in batch if "timestamp" in (r or "")
    ]
    answers = Counter[str]()

    def counting_run(batch: list[Any], index: int, *rest: Any) -> tuple[int, Any, int]:
        after, outcome, placed = _record_fastpath.convert_run(batch, index, *rest)
        answers["run"] += after - index + (outcome is not None)  # answered: consumed, or handed back
        answers["run declined"] += after < len(batch) and outcome is None
        return after, outcome, placed

    monkeypatch.setattr(pipeline, "convert_run", counting_run)
    for oldest in (None, min(stamps) + 40.5):  # the second: the first 41 records (and a copy) are too old
        answers.clear()
        results = []
        for fast_path in (True, False):
            store = workload.new_store(snapshot)
            workload.start_invocation(store)
            results.append(pipeline.convert_batch(event, store, oldest, fast_path=fast_path))
        compiled, pure = results
        records_in = compiled.result.records_in
        assert answers["run"] >= 900 and answers["run declined"] > 0, answers
        assert answers["run"] + answers["run declined"] == records_in
        check_same_transformed(compiled, pure, f"oldest={oldest}")
        summary = compiled.result.summary()
        assert compiled.result.resends >= 10 and compiled.result.dropped, summary
        if oldest is None:
            assert compiled.result.points > 900 and "too_old" not in compiled.result.quarantined, summary
        else:
            too_old = sum(stamp < oldest for stamp in stamps)
            assert compiled.result.quarantined["too_old"] == too_old > 40, summary


def check_same_transformed(compiled: BatchPoints, pure: BatchPoints, name: str) -> None:
    assert compiled.lines == pure.lines, name
    assert [(k, id(r)) for k, r in compiled.origins] == [(k, id(r)) for k, r in pure.origins], name
    assert {i: [(k, id(r)) for k, r in o] for i, o in compiled.more_origins.items()} == {
        i: [(k, id(r)) for k, r in o] for i, o in pure.more_origins.items()
    }, name
    assert compiled.first_timestamp == pure.first_timestamp, name

    def quarantined(done: BatchPoints) -> list[tuple[Any, ...]]:
        return [(q.partition_key, q.record, q.reason, q.detail) for q in done.quarantine]

    assert quarantined(compiled) == quarantined(pure), name
    a, b = compiled.result, pure.result
    for field_name in (
        "records_in",
        "written",
        "points",
        "dropped",
        "quarantined",
        "resends",
        "identity_collisions",
        "partitions",
    ):
        assert getattr(a, field_name) == getattr(b, field_name), (name, field_name)
    assert a.balanced and b.balanced and a.quarantined, name
