"""Point identity (:mod:`refinery.identity`): a pure function of the record, stable across versions.

* the fingerprint is pinned: points already stored were written at times derived from it, so a
  change would make every replay or redelivery after an upgrade write a second copy;
* the identity time never leaves the event's aligned 10**digits-ns window and stays an int64;
* distinct records agree in their last digits about as often as the README says (1 in 10**digits),
  including records that differ in a few bits only (CRC-32 alone is linear: the finaliser matters);
* ``convert_batch`` gives each record the point it gets alone, however the batch is cut.
"""

from __future__ import annotations

import itertools
import json
import random
from collections.abc import Iterable

from hypothesis import given, settings
from hypothesis import strategies as st

from refinery.identity import (
    DEFAULT_DIGITS,
    INT64_MAX,
    INT64_MIN,
    collision_probability,
    fingerprint,
    point_time,
    stamp_line,
)
from refinery.pipeline import convert_batch
from refinery_tools.dev import workload
from refinery_tools.dev.samples import sample_envelopes
from refinery_tools.events import build_kafka_event


def test_the_fingerprint_is_pinned() -> None:
    # Changing these numbers changes where every point is stored: a redelivery or replay after an
    # upgrade would write a second copy of each event. Only change them with a migration note.
    assert fingerprint(b"") == 0
    assert fingerprint(b"a") == 0xFE1AAAFFA044081F
    assert fingerprint(sample_envelopes()[0]) % 1000 == 12
    assert point_time(1_537_510_364_123_456_789, sample_envelopes()[0], 1000) == 1_537_510_364_123_456_012


def test_the_identity_time_stays_in_the_events_window_and_in_int64() -> None:
    rng = random.Random(3)
    values = [rng.randbytes(rng.randrange(0, 600)) for _ in range(2000)]
    for digits in range(7):
        modulus = 10**digits
        for value in values:
            event = rng.randrange(-(10**18), 9 * 10**18) if rng.random() < 0.9 else rng.choice([0, -1, 1])
            stamped = point_time(event, value, modulus)
            assert stamped // modulus == event // modulus  # the aligned window: never another µs (ms)
            assert stamped % modulus == fingerprint(value) % modulus
    for event in (INT64_MAX, INT64_MAX - 5, INT64_MIN, INT64_MIN + 5):
        for value in values[:200]:
            stamped = point_time(event, value, 1000)
            assert INT64_MIN <= stamped <= INT64_MAX
            assert abs(stamped - event) < 1000 and stamped % 1000 == fingerprint(value) % 1000
    assert point_time(123, b"x", 1) == 123


def test_stamp_line_replaces_only_the_trailing_time() -> None:
    line = "log,app=a\\ 1,instance=0 count=1i,size=3i 1537510364123456789"
    stamped, time = stamp_line(line, 1537510364123456789, b"v", 1000)
    assert stamped == f"log,app=a\\ 1,instance=0 count=1i,size=3i {time}"
    assert time // 1000 == 1537510364123456 and stamp_line(line, 7, b"v", 1) == (line, 7)


def pair_agreement(values: Iterable[bytes], modulus: int) -> tuple[int, int]:
    """(pairs of consecutive values whose fingerprints agree mod ``modulus``, pairs)."""
    slots = [fingerprint(v) % modulus for v in values]
    return sum(a == b for a, b in itertools.pairwise(slots)), len(slots) - 1


def test_distinct_records_share_a_point_about_one_time_in_a_thousand() -> None:
    """README's figure: 10**-digits per pair of same-series records in one window. 200 000 pairs of
    records differing in one counter (a few bits, the worst case for a linear CRC) and 200 000 pairs of
    random records: the share agreeing in the last three digits is within 25 % of 1/1000."""
    template = sample_envelopes()[0].decode()
    structured = [template.replace('"low":', f'"low":{i}0', 1).encode() for i in range(200_001)]
    rng = random.Random(11)
    unstructured = [rng.randbytes(300) for _ in range(200_001)]
    for values in (structured, unstructured):
        agree, pairs = pair_agreement(values, 1000)
        expected = pairs * collision_probability(DEFAULT_DIGITS)
        assert 0.75 * expected <= agree <= 1.25 * expected, (agree, pairs)
    agree, pairs = pair_agreement(structured, 1_000_000)
    assert agree <= 5, (agree, pairs)  # expected 0.2


def test_records_differing_only_in_the_last_digits_of_a_field_spread_evenly() -> None:
    """Per digit of the identity time, each value 0-9 appears about a tenth of the time, for records
    that differ only in the stop time of a request (what a nozzle re-send with a new stop time is)."""
    doc = json.loads(sample_envelopes()[0])
    counts = [[0] * 10 for _ in range(3)]
    for stop in range(50_000):
        doc["httpStartStop"]["stopTimestamp"] = 1537510364130000000 + stop
        slot = fingerprint(json.dumps(doc).encode()) % 1000
        for digit in range(3):
            counts[digit][slot // 10**digit % 10] += 1
    for per_digit in counts:
        assert all(4500 <= n <= 5500 for n in per_digit), counts


@settings(deadline=None, max_examples=40)
@given(st.data())
def test_any_cut_of_the_batch_gives_each_record_its_own_point(data: st.DataObject) -> None:
    """The points of a batch are the points of its records, each taken alone: cut the same records
    into any batches, over any partitions, in any order, and the set of points is the same."""
    work = WORK
    values = data.draw(st.lists(st.sampled_from(work.envelopes), min_size=1, max_size=60))
    partitions = data.draw(st.integers(1, 4))
    store = workload.new_store(work.snapshot)
    workload.start_invocation(store)
    alone = {v: convert_batch(build_kafka_event([v], partitions=1), store).lines for v in set(values)}
    expected = {line for v in values for line in alone[v]}
    order = data.draw(st.permutations(values))
    cuts = sorted(data.draw(st.sets(st.integers(1, max(1, len(order) - 1)), max_size=5)))
    got: set[str] = set()
    for start, end in zip([0, *cuts], [*cuts, len(order)], strict=True):
        if start < end:
            got.update(convert_batch(build_kafka_event(order[start:end], partitions=partitions), store).lines)
    assert got == expected


# Synthetic traffic of the benchmark (four active apps of twenty).
WORK = workload.build_workload(400, 20, 4, seed=2)


def test_the_compiled_and_pure_paths_agree_on_identity_times() -> None:
    values = list(WORK.envelopes) + sample_envelopes()
    event = build_kafka_event(values, partitions=2)
    results = []
    for fast_path in (True, False):
        for digits in (0, 3, 6):
            store = workload.new_store(WORK.snapshot)
            workload.start_invocation(store)
            results.append(convert_batch(event, store, timestamp_digits=digits, fast_path=fast_path).lines)
    assert results[:3] == results[3:]
    assert len({tuple(r) for r in results[:3]}) == 3  # the digits matter
