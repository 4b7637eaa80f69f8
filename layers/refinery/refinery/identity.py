"""A point's identity is a pure function of its record: the timestamp's last digits come from its bytes.

InfluxDB identifies a point by measurement, tag set and timestamp: a second point with the same three
replaces the first. Two *distinct* Firehose events may well share all three (two requests of one
instance, same method and status, started in the same nanosecond; two log lines of the same length);
and the same event may reach us twice (a nozzle re-send, a redelivered batch, a replay).

So the last ``digits`` decimal digits of every point's nanosecond timestamp are replaced by a
fingerprint of the record's value bytes (the bytes the nozzle wrote to Kafka)::

    point_time = event_time - (event_time mod 10**digits) + (fingerprint(value) mod 10**digits)

* byte-identical records (re-sends, redeliveries, replays) get the same point, so InfluxDB keeps one;
* distinct records get distinct points unless their fingerprints agree in those digits: for two
  records of the same series whose event times fall in the same 10**digits ns (1 µs by default),
  the chance is 10**-digits (1 in 1000), plus 2**-32 for a CRC-32 collision of two different values
  of the same length;
* nothing depends on the batch, the position, the partition or the offset, so any re-cut of the
  batches, any retry, replay or order of invocations writes the same final set of points;
* the time is changed by less than 10**digits ns and never leaves its aligned 10**digits-ns
  window (so never its microsecond by default): nothing a dashboard groups by moves.

``digits = 0`` writes the envelope's own timestamp, as cf-metrics-refinery did: still idempotent
under redelivery, but two distinct events with the same series and time overwrite each other.

The fingerprint is CRC-32 (``zlib.crc32``, the same in C and Python) of the value with its length,
put through the SplitMix64 finaliser so that every decimal digit is well mixed (CRC-32 alone is
linear: records differing in a few bits would agree in their low digits far more often than 1 in
10**digits). The compiled fast path computes the same numbers (tests compare them).
"""

from __future__ import annotations

from zlib import crc32

DEFAULT_DIGITS = 3
MAX_DIGITS = 6
INT64_MIN, INT64_MAX = -(1 << 63), (1 << 63) - 1
_MASK = (1 << 64) - 1


def fingerprint(value: bytes) -> int:
    """A well-mixed 64-bit fingerprint of a record's value bytes (CRC-32 and length, SplitMix64)."""
    x = crc32(value) | (len(value) << 32)
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK
    return x ^ (x >> 31)


def point_time(timestamp: int, value: bytes, modulus: int) -> int:
    """``timestamp`` with its last digits (``modulus = 10**digits``) taken from the value's fingerprint.

    Always an int64: a time within ``modulus`` of either end of the range keeps to it by moving one
    ``modulus`` inwards (still a pure function of the record).
    """
    if modulus == 1:
        return timestamp
    stamped = timestamp - timestamp % modulus + fingerprint(value) % modulus
    if stamped > INT64_MAX:
        stamped -= modulus
    elif stamped < INT64_MIN:
        stamped += modulus
    return stamped


def stamp_line(line: str, timestamp: int, value: bytes, modulus: int) -> tuple[str, int]:
    """A point built with the event's own time (``line`` ends with it) -> that point at its identity time."""
    if modulus == 1:
        return line, timestamp
    stamped = point_time(timestamp, value, modulus)
    return f"{line[: line.rindex(' ') + 1]}{stamped}", stamped


def collision_probability(digits: int) -> float:
    """Chance that two distinct records of one series within one aligned 10**digits ns share a point."""
    return 10.0**-digits + 2.0**-32
