"""Fuzzing the decoder and transform with mutated nozzle records ("Data safety" issue).

Mutations of the six bundled envelopes — byte flips, truncation, key deletions, type swaps, huge /
negative / float integers, NaN and infinities, deep nesting, random Unicode, non-base64 values, None
values, records that are not even objects — go through :func:`refinery.pipeline.convert_batch`
with a metadata store on the sample snapshot. No exception may escape, and every record must be
accounted for exactly once: records_in == written + dropped + quarantined.

The tests at the end pin the inputs of bugs found by this suite (deep nesting, integer cpu beyond the
float range, lone surrogates), fixed since.
"""

from __future__ import annotations

import base64
import json
import math
import random
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from refinery.metadata.store import FileSnapshotSource, MetadataStore
from refinery.pipeline import convert_batch
from refinery_tools.dev.samples import SAMPLE_APP, sample_envelopes, sample_snapshot
from refinery_tools.events import build_kafka_event

SAMPLES: list[dict[str, Any]] = [json.loads(raw) for raw in sample_envelopes()]
HYPOTHESIS_RECORDS = (4, 10)  # per example, drawn mutation by mutation (shrinkable)
RANDOM_RECORDS = (100, 130)  # per example, mutated by a random.Random seeded by hypothesis
EXAMPLES = 110  # 110 examples x at least 104 records: at least 11 440 records
TARGET = 10_000
#: The reasons README documents (plus too_old, not reachable here).
DROP_REASONS = {
    "value_metric",
    "counter_event",
    "error_event",
    "unsupported_event_type",
    "log_source_not_app_or_rtr",
    "no_app_id",
    "unknown_app",
}
QUARANTINE_REASONS = {
    "missing_value",
    "too_large",
    "not_base64",
    "not_json",
    "not_envelope",
    "bad_envelope",
    "bad_field",
}
#: Nesting built as Python objects (json.dumps itself recurses); deeper nesting is spliced into the
#: serialised bytes in place of DEEP, up to MAX_RAW_DEPTH (past orjson's limit of 1024 and the json
#: module's recursion limit).
MAX_FUZZ_DEPTH = 200
MAX_RAW_DEPTH = 5_000
DEEP = "\u2063deep\u2063"


def splice_deep(raw: bytes, depth: int) -> bytes:
    """Replace the DEEP placeholder (a JSON string) by ``depth`` nested arrays."""
    for form in (json.dumps(DEEP).encode(), json.dumps(DEEP, ensure_ascii=False).encode()):
        raw = raw.replace(form, b"[" * depth + b"1" + b"]" * depth)
    return raw


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> MetadataStore:
    path = Path(tmp_path_factory.mktemp("fuzz")) / "snapshot.json.gz"
    path.write_bytes(sample_snapshot())
    return MetadataStore(FileSnapshotSource(str(path)))


# ------------------------------------------------------------------------------------ strategies

HUGE_INTS = [
    (1 << 63) - 1,
    1 << 63,
    (1 << 64) - 1,
    1 << 64,
    -(1 << 63),
    -(1 << 63) - 1,
    (1 << 31),
    -(1 << 31) - 1,
    10**20,
    -(10**20),
    10**300,
    -(10**300),
    10**400,  # beyond the float range: orjson refuses it, the json fallback reads an int
    -(10**400),
]
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.sampled_from(HUGE_INTS),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.5, -1.5, 1e308, -1e-320, 4.0, 5.0, 9.0]),
    st.text(max_size=12),
    st.text(st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF), min_size=1, max_size=2),
    st.sampled_from(["", "0", "APP/PROC/WEB", "RTR", "aGk=", "aGk", "====", " ", "a,b=c d\\", "\n"]),
)


MUTATION_KINDS = ["intact", "structural", "structural", "structural", "bytes", "both", "wrap"]


def nested(depth: int, leaf: Any, as_dict: bool) -> Any:
    for _ in range(depth):
        leaf = {"k": leaf} if as_dict else [leaf]
    return leaf


REPLACEMENTS = st.one_of(
    SCALARS,
    st.lists(SCALARS, max_size=3),
    st.dictionaries(st.text(max_size=6), SCALARS, max_size=3),
    st.builds(nested, st.integers(1, MAX_FUZZ_DEPTH), SCALARS, st.booleans()),
    st.just(DEEP),
)


def paths(doc: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every key path into the nested objects (the envelope and its body)."""
    out = []
    if isinstance(doc, dict):
        for key, value in doc.items():
            out.append((*prefix, key))
            out.extend(paths(value, (*prefix, key)))
    return out


def parent_of(doc: dict[str, Any], path: tuple[Any, ...]) -> dict[str, Any]:
    for key in path[:-1]:
        doc = doc[key]
    return doc


@st.composite
def structural(draw: st.DrawFn, doc: dict[str, Any]) -> dict[str, Any]:
    """Key deletions, type swaps and value replacements at random paths."""
    for _ in range(draw(st.integers(0, 3))):
        where = paths(doc)
        if not where:
            break
        path = where[draw(st.integers(0, len(where) - 1))]
        parent = parent_of(doc, path)
        action = draw(st.sampled_from(["delete", "replace", "replace", "add"]))
        if action == "delete":
            del parent[path[-1]]
        elif action == "add":
            parent[draw(st.text(max_size=8))] = draw(REPLACEMENTS)
        else:
            parent[path[-1]] = draw(REPLACEMENTS)
    return doc


def serialise(doc: Any, ascii_only: bool) -> bytes:
    # allow_nan: NaN / Infinity / -Infinity tokens, as easyjson may write them.
    return json.dumps(doc, allow_nan=True, ensure_ascii=ascii_only, separators=(",", ":")).encode(
        "utf-8", "surrogatepass"
    )


@st.composite
def byte_level(draw: st.DrawFn, raw: bytes) -> bytes:
    """Byte flips, truncation, insertion of random bytes."""
    data = bytearray(raw)
    for _ in range(draw(st.integers(0, 3))):
        if not data:
            break
        action = draw(st.sampled_from(["flip", "truncate", "insert"]))
        position = draw(st.integers(0, len(data) - 1))
        if action == "flip":
            data[position] ^= 1 << draw(st.integers(0, 7))
        elif action == "truncate":
            del data[position:]
        else:
            data[position:position] = draw(st.binary(min_size=1, max_size=4))
    return bytes(data)


@st.composite
def mutated_value(draw: st.DrawFn) -> Any:
    """A Kafka record value: usually base64 of a mutated envelope, sometimes not even that."""
    doc = json.loads(json.dumps(draw(st.sampled_from(SAMPLES))))  # a deep copy, 64-bit ints exact
    kind = draw(
        st.sampled_from(["intact", "structural", "structural", "structural", "bytes", "both", "wrap"])
    )
    if kind in ("structural", "both"):
        doc = draw(structural(doc))
    elif kind == "wrap":  # a JSON value that is not an object
        doc = draw(st.one_of(st.just([doc]), REPLACEMENTS))
    raw = splice_deep(serialise(doc, draw(st.booleans())), draw(st.integers(1, MAX_RAW_DEPTH)))
    if kind in ("bytes", "both"):
        raw = draw(byte_level(raw))
    return encode_value(
        raw,
        draw(st.sampled_from(ENCODINGS)),
        position=lambda size: draw(st.integers(0, size)),
        junk=lambda: draw(st.sampled_from(JUNK)),
        text=lambda: draw(st.text(max_size=40)),
        other=lambda: draw(
            st.one_of(st.integers(), st.lists(st.integers(), max_size=2), st.floats(), st.booleans())
        ),
    )


ENCODINGS = ["base64"] * 12 + ["unpadded", "urlsafe", "junk", "text", "none", "other"]
JUNK = ["%", " ", "\n", "é", "=", "-_", "\x00"]


def encode_value(
    raw: bytes,
    encoding: str,
    *,
    position: Callable[[int], int],
    junk: Callable[[], str],
    text: Callable[[], str],
    other: Callable[[], Any],
) -> Any:
    """A record value for ``raw`` bytes: base64 (mostly), mangled base64, or not base64 at all; the
    callables draw what the chosen encoding needs (from hypothesis or from a seeded Random)."""
    encoded = base64.b64encode(raw).decode()
    if encoding == "base64":
        return encoded
    if encoding == "unpadded":
        return encoded.rstrip("=")
    if encoding == "urlsafe":
        return base64.urlsafe_b64encode(raw).decode()
    if encoding == "junk":
        at = position(len(encoded))
        return encoded[:at] + junk() + encoded[at:]
    if encoding == "text":
        return text()
    if encoding == "none":
        return None
    return other()


# -- The same mutations driven by a seeded random.Random drawn from hypothesis: the bulk of each batch
# -- (hypothesis-driven draws cost about a millisecond per record; these a few microseconds).

SPECIAL_TEXT = ["", "0", "APP/PROC/WEB", "RTR", "aGk=", "aGk", "====", " ", "a,b=c d\\", "\n", "日本 🚀"]
SPECIAL_FLOATS = [0.5, -1.5, 1e308, -1e-320, 4.0, 5.0, 9.0, math.nan, math.inf, -math.inf]


def random_text(rng: random.Random, size: int) -> str:
    chars = []
    for _ in range(size):
        if rng.random() < 0.02:
            code = rng.randint(0xD800, 0xDFFF)  # a lone surrogate
        else:
            code = rng.choice(
                (rng.randint(0x20, 0x7E), rng.randint(0xA0, 0xD7FF), rng.randint(0xE000, 0x10FFFF))
            )
        chars.append(chr(code))
    return "".join(chars)


def random_scalar(rng: random.Random) -> Any:
    pick = rng.randrange(8)
    if pick == 0:
        return rng.choice([None, True, False])
    if pick == 1:
        return rng.randint(-(1 << 70), 1 << 70)
    if pick == 2:
        return rng.choice(HUGE_INTS)
    if pick == 3:
        return rng.choice(SPECIAL_FLOATS)
    if pick == 4:
        return rng.uniform(-1, 1) * 10 ** rng.randint(-300, 300)
    if pick == 5:
        return random_text(rng, rng.randint(0, 12))
    if pick == 6:
        return rng.choice(SPECIAL_TEXT)
    return rng.randint(-5, 10)


def random_replacement(rng: random.Random) -> Any:
    pick = rng.randrange(10)
    if pick == 0:
        return [random_scalar(rng) for _ in range(rng.randint(0, 3))]
    if pick == 1:
        return {random_text(rng, 3): random_scalar(rng) for _ in range(rng.randint(0, 3))}
    if pick == 2:
        return nested(rng.randint(1, MAX_FUZZ_DEPTH), random_scalar(rng), rng.random() < 0.5)
    if pick == 3:
        return DEEP
    return random_scalar(rng)


def random_value(rng: random.Random) -> Any:
    """What :func:`mutated_value` draws, from a seeded ``random.Random``."""
    doc: Any = json.loads(json.dumps(rng.choice(SAMPLES)))
    kind = rng.choice(MUTATION_KINDS)
    if kind in ("structural", "both"):
        for _ in range(rng.randint(1, 3)):
            where = paths(doc)
            if not where:
                break
            path = rng.choice(where)
            parent = parent_of(doc, path)
            action = rng.choice(["delete", "replace", "replace", "add"])
            if action == "delete":
                del parent[path[-1]]
            elif action == "add":
                parent[random_text(rng, 4)] = random_replacement(rng)
            else:
                parent[path[-1]] = random_replacement(rng)
    elif kind == "wrap":
        doc = rng.choice([[doc], random_scalar(rng), random_replacement(rng)])
    depth = rng.randint(1, 1100) if rng.random() < 0.5 else rng.randint(1000, MAX_RAW_DEPTH)
    raw = bytearray(splice_deep(serialise(doc, rng.random() < 0.5), depth))
    if kind in ("bytes", "both"):
        for _ in range(rng.randint(1, 3)):
            if not raw:
                break
            position = rng.randrange(len(raw))
            action = rng.choice(["flip", "truncate", "insert"])
            if action == "flip":
                raw[position] ^= 1 << rng.randrange(8)
            elif action == "truncate":
                del raw[position:]
            else:
                raw[position:position] = rng.randbytes(rng.randint(1, 4))
    return encode_value(
        bytes(raw),
        rng.choice(ENCODINGS),
        position=lambda size: rng.randint(0, size),
        junk=lambda: rng.choice(JUNK),
        text=lambda: random_text(rng, rng.randint(0, 40)),
        other=lambda: rng.choice([rng.randint(-100, 100), [1, 2], 1.5, True, {"a": 1}]),
    )


@st.composite
def batches(draw: st.DrawFn) -> dict[str, Any]:
    values = draw(st.lists(mutated_value(), min_size=HYPOTHESIS_RECORDS[0], max_size=HYPOTHESIS_RECORDS[1]))
    rng = random.Random(draw(st.integers(0, 2**64 - 1)))  # a failing example names its seed
    values += [random_value(rng) for _ in range(rng.randint(*RANDOM_RECORDS))]
    rng.shuffle(values)
    event = build_kafka_event([b""] * len(values), partitions=draw(st.integers(1, 3)))
    i = 0
    for batch in event["records"].values():
        for record in batch:
            record["value"] = values[i]
            i += 1
    # Now and then a record that is not an object, or has no value at all.
    if draw(st.booleans()):
        first = next(iter(event["records"].values()))
        first.append(draw(st.one_of(st.none(), st.text(max_size=8), st.integers(), st.just([]))))
        first.append({"topic": "cf-firehose", "partition": 0, "offset": 10**6, "timestamp": 1})
    return event


# ------------------------------------------------------------------------------------------ tests


def check_accounting(event: dict[str, Any], store: MetadataStore) -> Any:
    store.begin_invocation()
    done = convert_batch(event, store)  # must not raise, whatever the records hold
    result = done.result
    records = sum(len(batch) for batch in event["records"].values())
    dropped = sum(result.dropped.values())
    quarantined = sum(result.quarantined.values())
    assert result.records_in == records
    assert result.records_in == result.written + dropped + quarantined, result.summary()
    assert len(done.quarantine) == quarantined
    assert Counter(q.reason for q in done.quarantine) == result.quarantined
    assert set(result.dropped) <= DROP_REASONS and set(result.quarantined) <= QUARANTINE_REASONS
    assert result.points == len(done.lines) == result.written - result.resends
    for line in done.lines:
        assert line.split(",", 1)[0] in ("http_request", "log", "instance")
        assert "\n" not in line and "NaN" not in line and "inf" not in line.rsplit(" ", 2)[1]
        int(line.rsplit(" ", 1)[1])
        line.encode("utf-8")  # what the sink sends (a lone surrogate would fail every write)
    return result


def test_mutated_nozzle_records_never_escape_and_are_all_accounted_for(store: MetadataStore) -> None:
    totals: Counter[str] = Counter()

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(batches())
    def run(event: dict[str, Any]) -> None:
        result = check_accounting(event, store)
        totals["records"] += result.records_in
        totals["written"] += result.written
        totals.update({f"dropped.{k}": v for k, v in result.dropped.items()})
        totals.update({f"quarantined.{k}": v for k, v in result.quarantined.items()})

    run()
    print(f"\nfuzzed records: {totals['records']}; outcomes: {dict(sorted(totals.items()))}")
    assert totals["records"] >= TARGET
    outcomes = totals["written"] + sum(v for k, v in totals.items() if "." in k)
    assert outcomes == totals["records"]
    # The search reached every stage: written points, policy drops, and each kind of poison.
    assert totals["written"] > 0 and totals["dropped.value_metric"] > 0
    for reason in ("not_base64", "not_json", "not_envelope", "bad_field", "missing_value", "bad_envelope"):
        assert totals[f"quarantined.{reason}"] > 0, reason


def encoded(doc: Any) -> str:
    return base64.b64encode(serialise(doc, True)).decode()


def container(**changes: Any) -> dict[str, Any]:
    doc = json.loads(json.dumps(SAMPLES[3]))
    doc["containerMetric"].update(changes)
    return doc


def one_record_batch(value: str) -> dict[str, Any]:
    event = build_kafka_event([b""])
    event["records"]["cf-firehose-0"][0]["value"] = value
    return event


def test_edge_values_of_the_hazard_list_are_accounted_for(store: MetadataStore) -> None:
    """Deterministic corner cases next to the random search."""
    log = json.loads(json.dumps(SAMPLES[1]))
    docs = [
        container(cpuPercentage=math.nan),
        container(cpuPercentage=math.inf),
        container(cpuPercentage=10**300),
        container(memoryBytesQuota=0, diskBytesQuota=0),
        container(memoryBytes=-1),
        {**log, "logMessage": {**log["logMessage"], "timestamp": (1 << 63)}},
        {**log, "logMessage": {**log["logMessage"], "source_instance": "é \n,= \\"}},
        {**log, "logMessage": {**log["logMessage"], "message": None}},
        {"eventType": 4, "httpStartStop": {"applicationId": {"low": -1, "high": 0}}},
        {"eventType": 4.0, "httpStartStop": {}},
        {"eventType": True},
        {"eventType": 5, "logMessage": nested(MAX_FUZZ_DEPTH, 1, True)},
        [SAMPLES[0]],
    ]
    values: list[Any] = [encoded(d) for d in docs]
    values += [None, 42, "", "====", "%%%", "A" * (2 * 1024 * 1024), base64.b64encode(b"\xff\xfe{").decode()]
    for value in values:
        check_accounting(one_record_batch(value), store)
    check_accounting({"eventSource": "aws:kafka", "records": {"t-0": list(values)}}, store)


def test_deeply_nested_json_is_quarantined_not_a_crash(store: MetadataStore) -> None:
    """Regression: JSON nested deeper than orjson's limit (1024) fell back to json.loads, whose
    RecursionError escaped convert_batch (the batch failed on every retry)."""
    raw = b'{"eventType":5,"logMessage":' + b"[" * 5_000 + b"1" + b"]" * 5_000 + b"}"
    result = check_accounting(one_record_batch(base64.b64encode(raw).decode()), store)
    assert result.quarantined == {"not_json": 1}


def test_a_huge_integer_cpu_percentage_omits_the_field(store: MetadataStore) -> None:
    """Regression: an integer cpuPercentage beyond the float range (orjson refuses it, the json fallback
    reads it as an int) used to raise OverflowError out of convert_batch (float(cpu))."""
    raw = serialise(container(), True).replace(
        b'"cpuPercentage":0.4518379826149203', b'"cpuPercentage":1' + b"0" * 400
    )
    assert b"0" * 400 in raw
    store.begin_invocation()
    done = convert_batch(one_record_batch(base64.b64encode(raw).decode()), store)
    assert done.result.written == 1 and len(done.lines) == 1
    assert " disk=" in done.lines[0] and "cpu=" not in done.lines[0]


def test_a_lone_surrogate_is_quarantined_and_every_line_can_be_encoded(store: MetadataStore) -> None:
    """Regression: a lone surrogate escape (\\ud800) in logMessage.source_instance used to be accepted by
    the json fallback, copied into the instance tag, and make the sink's .encode() fail every retry."""
    log = json.loads(json.dumps(SAMPLES[1]))
    log["logMessage"]["source_instance"] = "\ud800"
    assert log["logMessage"]["app_id"] == SAMPLE_APP.guid
    store.begin_invocation()
    done = convert_batch(one_record_batch(encoded(log)), store)
    assert done.result.quarantined == {"not_json": 1} and done.lines == []
