# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""The compiled fast path: one Kafka record value -> its line, without building Python objects.

The reference path base64-decodes a record, parses it into dicts with orjson and reads the fields
(:func:`refinery.convert.convert`). This module base64-decodes it the same way and then *scans*
the JSON bytes once, in C: it checks the whole document against the JSON grammar (strings, escapes,
UTF-8, numbers, nesting) and reads only the fields a point needs, straight into C integers.

It answers only when it is sure to give what the reference gives. Anything it does not handle —
invalid JSON, a repeated key it reads, a field of an unexpected type or out of range, a string it
reads holding an escape or non-ASCII text, a number it would have to round differently, nesting
deeper than 64 — makes :func:`convert_value` return ``None``, and the caller takes the reference
path, which names the reason for the quarantine. It also returns ``None`` before calling
``lookup`` whenever it could not finish, so the metadata store sees each record once.

``tests/unit/test_record_fastpath.py`` checks it against the reference on generated, mutated and
hand-made records; :mod:`refinery.speedups` decides whether it is used.
"""

from cpython.ref cimport PyObject
from libc.string cimport memcmp, strchr, strlen
from zlib import crc32

from .envelope import MAX_VALUE_BYTES, b64decode
from .lineproto import format_float as _py_format_float
from . import convert as _py


cdef extern from "Python.h":
    char* PyOS_double_to_string(double val, char format_code, int precision, int flags,
                                int *ptype) except NULL
    double PyOS_string_to_double(const char *s, char **endptr, PyObject *overflow_exception) except? -1.0
    void PyMem_Free(void *p)
    int Py_DTSF_ADD_DOT_0
    object PyUnicode_DecodeASCII(const char *s, Py_ssize_t size, const char *errors)
    char* PyBytes_AS_STRING(object o)
    Py_ssize_t PyBytes_GET_SIZE(object o)

cdef extern from *:
    bint sub_overflows "__builtin_ssubll_overflow"(long long a, long long b, long long *out)
    bint add_overflows "__builtin_saddll_overflow"(long long a, long long b, long long *out)
    bint isfinite "isfinite"(double x)

cdef extern from *:
    """
    #include <stddef.h>
    #if defined(__SSE2__)
    #include <emmintrin.h>
    #endif
    /* The first byte at or after p that ends a run of plain string bytes: a quote, a backslash, a
       control character or a byte >= 0x80 (or end). Sixteen bytes at a time where SSE2 exists. */
    static inline const unsigned char *refinery_plain_run(const unsigned char *p, const unsigned char *end) {
    #if defined(__SSE2__)
        const __m128i quote = _mm_set1_epi8(0x22), backslash = _mm_set1_epi8(0x5C),
                      space = _mm_set1_epi8(0x20);
        while (end - p >= 16) {
            __m128i v = _mm_loadu_si128((const __m128i *)p);
            /* signed: bytes >= 0x80 are negative, so one compare finds them and the controls */
            __m128i hit = _mm_or_si128(_mm_or_si128(_mm_cmpeq_epi8(v, quote), _mm_cmpeq_epi8(v, backslash)),
                                       _mm_cmplt_epi8(v, space));
            int mask = _mm_movemask_epi8(hit);
            if (mask)
                return p + __builtin_ctz(mask);
            p += 16;
        }
    #endif
        while (p < end && *p != 0x22 && *p != 0x5C && *p >= 0x20 && *p < 0x80)
            p++;
        return p;
    }
    """
    const unsigned char *plain_run "refinery_plain_run"(const unsigned char *p, const unsigned char *end) noexcept nogil


ctypedef unsigned char uchar
ctypedef unsigned long long u64

cdef long long NS_PER_S = 1_000_000_000
cdef long long I32_MIN = -(1 << 31)
cdef long long I32_MAX = (1 << 31) - 1
cdef u64 I64_MAX = (1ULL << 63) - 1
cdef int MAX_DEPTH = 64
cdef Py_ssize_t MAX_VALUE_CHARS = MAX_VALUE_BYTES * 4 // 3 + 4

cdef tuple METHODS = tuple(_py.METHODS)
cdef Py_ssize_t N_METHODS = len(METHODS)
cdef dict INSTANCES = _py._INSTANCES
cdef dict TYPE_DROPS = _py._TYPE_DROPS
cdef object DROP_UNSUPPORTED_TYPE = _py.DROP_UNSUPPORTED_TYPE
cdef object DROP_LOG_SOURCE = _py.DROP_LOG_SOURCE
cdef object DROP_NO_APP_ID = _py.DROP_NO_APP_ID
cdef object DROP_UNKNOWN_APP = _py.DROP_UNKNOWN_APP
cdef object instance_tag_of = _py._instance_tag
cdef const char *HEX = b"0123456789abcdef"


include "_fastpath_scan.pxi"
include "_fastpath_envelope.pxi"


# ------------------------------------------------------------------------------- numbers as text

cdef object float_text(double value):
    """:func:`refinery.lineproto.format_float`: repr without a trailing ``.0``; what repr writes with
    an exponent (and inf/nan) goes to the Python function."""
    cdef char *text = PyOS_double_to_string(value, b'r', 0, Py_DTSF_ADD_DOT_0, NULL)
    cdef Py_ssize_t n = strlen(text)
    cdef bint plain = strchr(text, b'e') == NULL and strchr(text, b'n') == NULL
    if plain and n > 2 and text[n - 2] == b'.' and text[n - 1] == b'0':
        n -= 2
    try:
        if plain:
            return PyUnicode_DecodeASCII(text, n, NULL)
    finally:
        PyMem_Free(text)
    return _py_format_float(value)


cdef object subsecond_text(long long ns):
    """Go's ``FormatFloat(float64(ns)/1e9, 'f', -1, 64)`` for 0 <= ns < 1e9: the exact decimal.

    ``ns / 1e9`` is the double nearest to ns·10⁻⁹, and no decimal with nine or fewer fraction digits
    other than ns·10⁻⁹ itself lies within half a unit of it, so its shortest round-trip form is
    ns·10⁻⁹ written out with trailing zeros removed (tests compare it with the float formatting).
    """
    cdef char text[12]
    cdef int i, last
    if ns == 0:
        return "0"
    text[0] = b'0'
    text[1] = b'.'
    for i in range(10, 1, -1):
        text[i] = <char>(48 + ns % 10)
        ns //= 10
    last = 10
    while text[last] == b'0':
        last -= 1
    return PyUnicode_DecodeASCII(text, last + 1, NULL)


cdef inline double go_seconds(long long ns):
    """Go's ``Duration.Seconds()`` (as :func:`refinery.convert.go_seconds`; C division truncates)."""
    cdef long long sec = ns / NS_PER_S
    return <double>sec + <double>(ns - sec * NS_PER_S) / 1e9


cdef object guid_text(u64 low, u64 high):
    """sonde-go UUID halves -> ``8-4-4-4-12`` lowercase GUID (bytes little-endian per half)."""
    cdef char text[36]
    cdef uchar raw[16]
    cdef int i, j = 0
    for i in range(8):
        raw[i] = (low >> (8 * i)) & 0xFF
        raw[8 + i] = (high >> (8 * i)) & 0xFF
    for i in range(16):
        if i == 4 or i == 6 or i == 8 or i == 10:
            text[j] = b'-'
            j += 1
        text[j] = HEX[raw[i] >> 4]
        text[j + 1] = HEX[raw[i] & 15]
        j += 2
    return PyUnicode_DecodeASCII(text, 36, NULL)


cdef inline object ascii_text(Span *span):
    return PyUnicode_DecodeASCII(<const char *>span.start, span.size, NULL)


cdef inline bint starts(Span *span, const char *prefix) noexcept nogil:
    return span.size >= 3 and memcmp(span.start, prefix, 3) == 0


# ------------------------------------------------------------------------------- identity

cdef object CRC32 = crc32


cdef inline u64 fingerprint(object raw):
    """:func:`refinery.identity.fingerprint`: CRC-32 and length through the SplitMix64 finaliser."""
    cdef u64 x = (<u64>CRC32(raw)) | ((<u64>PyBytes_GET_SIZE(raw)) << 32)
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ULL
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBULL
    return x ^ (x >> 31)


cdef inline bint stamp_base(long long timestamp, long long modulus, long long *base):
    """The timestamp with its last digits cleared. False when a stamped time might leave the int64
    range (the reference path, :func:`refinery.identity.point_time`, handles those few)."""
    cdef long long rest = timestamp % modulus
    if rest < 0:
        rest += modulus
    if sub_overflows(timestamp, rest, base):
        return False
    cdef long long top
    return not add_overflows(base[0], modulus - 1, &top)


cdef inline long long stamped(long long base, object raw, long long modulus):
    """:func:`refinery.identity.point_time` of a time whose ``base`` passed :func:`stamp_base`."""
    if modulus == 1:
        return base
    return base + <long long>(fingerprint(raw) % <u64>modulus)


# ------------------------------------------------------------------------------- points

cdef object http_point(Http *h, object tags, long long time):
    cdef long long elapsed
    if sub_overflows(h.stop, h.start, &elapsed):
        duration = _py_format_float(_py.go_seconds(h.stop - <object>h.start))  # saturates, as Go does
    elif 0 <= elapsed < NS_PER_S:
        duration = subsecond_text(elapsed)
    else:
        duration = float_text(go_seconds(elapsed))
    if 1 <= h.method <= N_METHODS:
        method = METHODS[h.method - 1]
    else:
        method = str(h.method)
    return (
        f"http_request{tags.head},instance={h.index},method={method}{tags.tail}"
        f",status_code={h.status} count=1i,duration={duration},response_size={h.size}i {time}",
        time,
    )


cdef object log_point(Log *m, object tags, object kind, long long time):
    cdef Py_ssize_t n = m.message.size
    if n:
        n = n // 4 * 3 - (m.message.start[n - 1] == 61) - (m.message.start[n - 2] == 61)
    instance = ascii_text(&m.source_instance)
    instance_tag = INSTANCES.get(instance)
    if instance_tag is None:
        instance_tag = instance_tag_of(instance)
    return (
        f"log{tags.head},instance={instance_tag}{tags.tail},type={kind} count=1i,size={n}i {time}",
        time,
    )


cdef object container_point(Container *m, long long timestamp, object tags):
    cpu_text = float_text(m.cpu)
    if cpu_text is not None:
        fields = f"cpu={cpu_text},disk={m.disk}i"
    else:
        fields = f"disk={m.disk}i"
    if m.disk_quota:
        fields += f",disk_pct={float_text(<double>m.disk / <double>m.disk_quota)}"
    fields += f",disk_quota={m.disk_quota}i,memory={m.memory}i"
    if m.memory_quota:
        fields += f",memory_pct={float_text(<double>m.memory / <double>m.memory_quota)}"
    return (
        f"instance{tags.head},instance={m.index}{tags.tail} {fields},memory_quota={m.memory_quota}i"
        f" {timestamp}",
        timestamp,
    )


def convert_value(value, lookup, long long modulus=1):
    """A record's base64 value -> what :func:`refinery.convert.convert` gives for it (a point or
    a ``Dropped``; the point at its identity time, :func:`refinery.identity.stamp_line`, with
    ``modulus`` = 10**digits), or ``None``: not handled here, take the reference path."""
    return convert_record(value, lookup, modulus)


def convert_run(list batch not None, Py_ssize_t index, key, lookup, dict by_time not None,
                  list lines not None, list origins not None, dropped, oldest_ms, long long modulus):
    """The records ``batch[index:]`` through the fast path, for as long as each one is a point with a
    timestamp no other point of the batch has, or a drop by policy: placed and counted exactly as
    :func:`refinery.pipeline.convert_batch` does (``by_time``, ``lines``, ``origins``, the
    ``dropped`` Counter). It stops at the first record that needs the pipeline's own handling,
    which includes one with a Kafka ``timestamp`` below ``oldest_ms`` (when not None: too old). Points
    are at their identity time (``modulus`` = 10**``TIMESTAMP_HASH_DIGITS``, see :mod:`refinery.identity`).

    Returns ``(next, outcome, written)``: ``written`` points were placed; when ``next < len(batch)``,
    ``batch[next]`` was not, and ``outcome`` is its outcome already computed here (a point whose
    timestamp is taken, or ``DROP_UNKNOWN_APP``, which needs the store's ``last_miss``), or None
    (not a dict, too old, or not handled by the fast path: take the reference path).
    """
    cdef Py_ssize_t size = len(batch), written = 0
    while index < size:
        record = batch[index]
        if type(record) is not dict:
            return index, None, written
        if oldest_ms is not None:
            stamp = (<dict>record).get("timestamp")
            if type(stamp) is int and stamp < oldest_ms:
                return index, None, written
        outcome = convert_record((<dict>record).get("value"), lookup, modulus)
        if outcome is None:
            return index, None, written
        if type(outcome) is tuple:
            timestamp = (<tuple>outcome)[1]
            if timestamp in by_time:
                return index, outcome, written
            by_time[timestamp] = len(lines)
            lines.append((<tuple>outcome)[0])
            origins.append((key, record))
            written += 1
        elif outcome is DROP_UNKNOWN_APP:
            return index, outcome, written
        else:
            dropped[(<tuple>outcome)[0]] += 1
        index += 1
    return index, None, written


cdef object convert_record(value, lookup, long long modulus):
    if type(value) is not str or len(<str>value) > MAX_VALUE_CHARS:
        return None
    try:
        raw = b64decode(value)
    except ValueError:
        return None
    cdef const uchar *data = <const uchar *>PyBytes_AS_STRING(raw)
    cdef const uchar *end = data + PyBytes_GET_SIZE(raw)
    cdef Cursor c
    cdef Envelope env
    cdef Http h
    cdef Log m
    cdef Container k
    cdef long long base
    c.p = data
    c.end = end
    if not scan_envelope(&c, &env):
        return None
    if env.event_type == 5:  # LogMessage
        if not env.seen & HAS_LOG or env.log[0] != 123 or not scan_log(env.log, end, &m):
            return None
        if starts(&m.source_type, "APP") or starts(&m.source_type, "App"):
            kind = "OUT" if m.message_type == 1 else "ERR"
        elif starts(&m.source_type, "RTR"):
            kind = "RTR"
        else:
            return DROP_LOG_SOURCE
        if m.message.size % 4:
            return None
        if not m.app_id.size:
            return DROP_NO_APP_ID
        if not stamp_base(m.timestamp, modulus, &base):
            return None
        tags = lookup(ascii_text(&m.app_id))
        if tags is None:
            return DROP_UNKNOWN_APP
        return log_point(&m, tags, kind, stamped(base, raw, modulus))
    if env.event_type == 4:  # HttpStartStop
        if not env.seen & HAS_HTTP or env.http[0] != 123 or not scan_http(env.http, end, &h):
            return None
        if not stamp_base(h.start, modulus, &base):
            return None
        tags = lookup(guid_text(h.low, h.high))
        if tags is None:
            return DROP_UNKNOWN_APP
        return http_point(&h, tags, stamped(base, raw, modulus))
    if env.event_type == 9:  # ContainerMetric
        if (not env.seen & HAS_CONTAINER or env.container[0] != 123
                or not env.seen & HAS_TIMESTAMP_INT or not scan_container(env.container, end, &k)):
            return None
        if not k.app_id.size:
            return DROP_NO_APP_ID
        if not stamp_base(env.timestamp, modulus, &base):
            return None
        tags = lookup(ascii_text(&k.app_id))
        if tags is None:
            return DROP_UNKNOWN_APP
        return container_point(&k, stamped(base, raw, modulus), tags)
    return TYPE_DROPS.get(env.event_type, DROP_UNSUPPORTED_TYPE)
