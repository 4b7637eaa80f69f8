# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""The compiled fast path: one Kafka record value -> its line, without building Python objects.

The reference path base64-decodes a record, parses it into dicts with orjson and reads the fields
(:func:`refinery.transform.convert`). This module base64-decodes it the same way and then *scans*
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
from . import transform as _py


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


# ------------------------------------------------------------------------------- the JSON scanner

cdef struct Cursor:
    const uchar *p
    const uchar *end
    int depth

cdef struct Span:  # a string's characters (no quotes) or a number's text
    const uchar *start
    Py_ssize_t size
    bint is_int  # numbers: no fraction, no exponent
    bint plain   # strings: ASCII, no escape


cdef inline void skip_ws(Cursor *c) noexcept nogil:
    while c.p < c.end and (c.p[0] == 32 or c.p[0] == 10 or c.p[0] == 13 or c.p[0] == 9):
        c.p += 1


cdef inline int hex_value(uchar ch) noexcept nogil:
    if 48 <= ch <= 57:
        return ch - 48
    if 97 <= ch <= 102:
        return ch - 87
    if 65 <= ch <= 70:
        return ch - 55
    return -1


cdef bint scan_string(Cursor *c, Span *out) noexcept nogil:
    """At a quote: a JSON string. False for anything the reference might read differently or refuse:
    control characters, bad escapes, surrogate escapes, invalid UTF-8."""
    cdef const uchar *p = c.p + 1
    cdef const uchar *end = c.end
    cdef uchar ch
    cdef int i, h, unit
    out.start = p
    out.plain = True
    while p < end:
        p = plain_run(p, end)
        if p >= end:
            return False
        ch = p[0]
        if ch == 34:  # closing quote
            out.size = p - out.start
            c.p = p + 1
            return True
        if ch < 32:
            return False
        if ch == 92:  # backslash
            out.plain = False
            if p + 1 >= end:
                return False
            ch = p[1]
            if ch == 117:  # \uXXXX
                if p + 6 > end:
                    return False
                unit = 0
                for i in range(2, 6):
                    h = hex_value(p[i])
                    if h < 0:
                        return False
                    unit = unit * 16 + h
                if 0xD800 <= unit <= 0xDFFF:  # surrogates: paired or lone, left to the reference
                    return False
                p += 6
                continue
            if ch == 34 or ch == 92 or ch == 47 or ch == 98 or ch == 102 or ch == 110 or ch == 114 or ch == 116:
                p += 2
                continue
            return False
        out.plain = False  # plain_run stops only at the bytes above, or at one >= 0x80:
        # UTF-8: well-formed sequences only (no overlongs, no surrogates, nothing above U+10FFFF)
        if 0xC2 <= ch <= 0xDF:
            if p + 1 >= end or (p[1] & 0xC0) != 0x80:
                return False
            p += 2
        elif 0xE0 <= ch <= 0xEF:
            if p + 2 >= end or (p[1] & 0xC0) != 0x80 or (p[2] & 0xC0) != 0x80:
                return False
            if (ch == 0xE0 and p[1] < 0xA0) or (ch == 0xED and p[1] > 0x9F):
                return False
            p += 3
        elif 0xF0 <= ch <= 0xF4:
            if p + 3 >= end or (p[1] & 0xC0) != 0x80 or (p[2] & 0xC0) != 0x80 or (p[3] & 0xC0) != 0x80:
                return False
            if (ch == 0xF0 and p[1] < 0x90) or (ch == 0xF4 and p[1] > 0x8F):
                return False
            p += 4
        else:
            return False
    return False


cdef bint scan_number(Cursor *c, Span *out) noexcept nogil:
    """A JSON number, by the grammar: ``-?(0|[1-9][0-9]*)(\\.[0-9]+)?([eE][+-]?[0-9]+)?``."""
    cdef const uchar *p = c.p
    cdef const uchar *end = c.end
    out.start = p
    out.is_int = True
    if p < end and p[0] == 45:
        p += 1
    if p >= end:
        return False
    if p[0] == 48:
        p += 1
    elif 49 <= p[0] <= 57:
        while p < end and 48 <= p[0] <= 57:
            p += 1
    else:
        return False
    if p < end and p[0] == 46:
        out.is_int = False
        p += 1
        if p >= end or not 48 <= p[0] <= 57:
            return False
        while p < end and 48 <= p[0] <= 57:
            p += 1
    if p < end and (p[0] == 101 or p[0] == 69):
        out.is_int = False
        p += 1
        if p < end and (p[0] == 43 or p[0] == 45):
            p += 1
        if p >= end or not 48 <= p[0] <= 57:
            return False
        while p < end and 48 <= p[0] <= 57:
            p += 1
    out.size = p - out.start
    c.p = p
    return True


cdef bint skip_value(Cursor *c) noexcept nogil:
    """Any JSON value, checked and passed over."""
    cdef Span span
    skip_ws(c)
    if c.p >= c.end:
        return False
    cdef uchar ch = c.p[0]
    if ch == 34:
        return scan_string(c, &span)
    if ch == 123 or ch == 91:
        return skip_container(c, ch == 123)
    if ch == 45 or 48 <= ch <= 57:
        return scan_number(c, &span)
    if ch == 116 and c.end - c.p >= 4 and memcmp(c.p, b"true", 4) == 0:
        c.p += 4
        return True
    if ch == 102 and c.end - c.p >= 5 and memcmp(c.p, b"false", 5) == 0:
        c.p += 5
        return True
    if ch == 110 and c.end - c.p >= 4 and memcmp(c.p, b"null", 4) == 0:
        c.p += 4
        return True
    return False


cdef bint skip_container(Cursor *c, bint is_object) noexcept nogil:
    cdef Span key
    cdef uchar close = 125 if is_object else 93
    c.depth += 1
    if c.depth > MAX_DEPTH:
        return False
    c.p += 1
    skip_ws(c)
    if c.p < c.end and c.p[0] == close:
        c.p += 1
        c.depth -= 1
        return True
    while True:
        if is_object:
            skip_ws(c)
            if c.p >= c.end or c.p[0] != 34 or not scan_string(c, &key):
                return False
            skip_ws(c)
            if c.p >= c.end or c.p[0] != 58:
                return False
            c.p += 1
        if not skip_value(c):
            return False
        skip_ws(c)
        if c.p >= c.end:
            return False
        if c.p[0] == 44:
            c.p += 1
            continue
        if c.p[0] == close:
            c.p += 1
            c.depth -= 1
            return True
        return False


cdef inline bint next_member(Cursor *c, bint *first, Span *key) noexcept nogil:
    """In an object (after its ``{``): the next member's key, the cursor at its value. False at the
    end of the object; ``c.depth`` is set to -1 when the object is malformed, or when a key holds an
    escape or non-ASCII text (``"event\\u0054ype"`` would be ``eventType`` to a JSON parser)."""
    skip_ws(c)
    if c.p >= c.end:
        c.depth = -1
        return False
    if c.p[0] == 125:  # }
        c.p += 1
        return False
    if not first[0]:
        if c.p[0] != 44:  # ,
            c.depth = -1
            return False
        c.p += 1
        skip_ws(c)
        if c.p >= c.end:
            c.depth = -1
            return False
    first[0] = False
    if c.p[0] != 34 or not scan_string(c, key) or not key.plain:
        c.depth = -1
        return False
    skip_ws(c)
    if c.p >= c.end or c.p[0] != 58:  # :
        c.depth = -1
        return False
    c.p += 1
    skip_ws(c)
    return True


cdef inline bint is_key(Span *key, const char *name, Py_ssize_t size) noexcept nogil:
    return key.size == size and memcmp(key.start, name, size) == 0


cdef inline uchar ascii_upper(uchar ch) noexcept nogil:
    return ch - 32 if 97 <= ch <= 122 else ch


cdef bint folds_to(Span *key, const char *names) noexcept nogil:
    """True when the (plain ASCII) key equals one of the space-separated ``names`` but for ASCII case:
    Go's decoder would read it as that field (:func:`refinery.envelope.go_view`); the fast path, which
    matches exact keys only, then declines the record."""
    cdef const uchar *name = <const uchar *>names
    cdef Py_ssize_t i
    while name[0]:
        i = 0
        while i < key.size and name[i] and name[i] != 32 and ascii_upper(key.start[i]) == ascii_upper(name[i]):
            i += 1
        if i == key.size and (name[i] == 0 or name[i] == 32):
            return True
        while name[0] and name[0] != 32:
            name += 1
        while name[0] == 32:
            name += 1
    return False


cdef bint read_int(Cursor *c, Span *span, long long lo, long long hi, long long *out) noexcept nogil:
    """A JSON integer (no fraction or exponent) within [lo, hi]."""
    if c.p >= c.end or not (c.p[0] == 45 or 48 <= c.p[0] <= 57):
        return False
    if not scan_number(c, span) or not span.is_int:
        return False
    cdef const uchar *p = span.start
    cdef const uchar *end = p + span.size
    cdef bint negative = p[0] == 45
    cdef u64 value = 0
    if negative:
        p += 1
    while p < end:
        if value > (18446744073709551615ULL - <u64>(p[0] - 48)) // 10:
            return False
        value = value * 10 + <u64>(p[0] - 48)
        p += 1
    if negative:
        if value > I64_MAX + 1:
            return False
        out[0] = <long long>(0 - value)
    else:
        if value > I64_MAX:
            return False
        out[0] = <long long>value
    return lo <= out[0] <= hi


cdef bint read_u64(Cursor *c, Span *span, u64 *out) noexcept nogil:
    if c.p >= c.end or not 48 <= c.p[0] <= 57:
        return False
    if not scan_number(c, span) or not span.is_int:
        return False
    cdef const uchar *p = span.start
    cdef const uchar *end = p + span.size
    cdef u64 value = 0
    while p < end:
        if value > (18446744073709551615ULL - <u64>(p[0] - 48)) // 10:
            return False
        value = value * 10 + <u64>(p[0] - 48)
        p += 1
    out[0] = value
    return True


cdef bint read_plain_string(Cursor *c, Span *span) noexcept nogil:
    """A string of ASCII without escapes (the strings the fast path reads)."""
    if c.p >= c.end or c.p[0] != 34:
        return False
    return scan_string(c, span) and span.plain


# ------------------------------------------------------------------------------- one envelope

cdef enum:
    HAS_EVENT_TYPE = 1
    HAS_TIMESTAMP = 2
    HAS_HTTP = 4
    HAS_LOG = 8
    HAS_CONTAINER = 16
    HAS_TIMESTAMP_INT = 32

cdef struct Envelope:
    int seen
    long long event_type
    long long timestamp
    const uchar *http
    const uchar *log
    const uchar *container


cdef inline bint locate_body(Cursor *c, Envelope *env, int bit, const uchar **at) noexcept nogil:
    """A body object's start (its value checked and passed over); False if the key came before."""
    if env.seen & bit:
        return False
    env.seen |= bit
    at[0] = c.p
    return skip_value(c)


cdef bint scan_envelope(Cursor *c, Envelope *env) noexcept nogil:
    """The top-level object: eventType and timestamp read, the three bodies located (and checked)."""
    cdef Span key, span
    cdef bint first = True
    cdef Cursor probe
    env.seen = 0
    skip_ws(c)
    if c.p >= c.end or c.p[0] != 123:
        return False
    c.p += 1
    c.depth = 1
    while next_member(c, &first, &key):
        if is_key(&key, "eventType", 9):
            if env.seen & HAS_EVENT_TYPE or not read_int(c, &span, -(1LL << 62), 1LL << 62, &env.event_type):
                return False
            env.seen |= HAS_EVENT_TYPE
        elif is_key(&key, "timestamp", 9):
            if env.seen & HAS_TIMESTAMP:
                return False
            env.seen |= HAS_TIMESTAMP
            probe = c[0]
            if read_int(&probe, &span, -(1LL << 63), <long long>I64_MAX, &env.timestamp):
                env.seen |= HAS_TIMESTAMP_INT
                c.p = probe.p
            elif not skip_value(c):
                return False
        elif is_key(&key, "httpStartStop", 13):
            if not locate_body(c, env, HAS_HTTP, &env.http):
                return False
        elif is_key(&key, "logMessage", 10):
            if not locate_body(c, env, HAS_LOG, &env.log):
                return False
        elif is_key(&key, "containerMetric", 15):
            if not locate_body(c, env, HAS_CONTAINER, &env.container):
                return False
        elif folds_to(&key, "eventType timestamp httpStartStop logMessage containerMetric") or not skip_value(c):
            return False
    if c.depth < 0:
        return False
    skip_ws(c)
    return c.p == c.end and env.seen & HAS_EVENT_TYPE


cdef struct Http:
    int seen
    long long start, stop, method, status, size, index
    u64 low, high

cdef struct Log:
    int seen
    long long timestamp, message_type
    Span message, app_id, source_type, source_instance

cdef struct Container:
    int seen
    long long index, memory, disk, memory_quota, disk_quota
    double cpu
    Span app_id


cdef inline bint once(int *seen, int bit) noexcept nogil:
    if seen[0] & bit:
        return False
    seen[0] |= bit
    return True


cdef bint scan_http(const uchar *at, const uchar *end, Http *h) noexcept nogil:
    cdef Cursor c
    cdef Span key, span
    cdef bint first = True, inner_first
    c.p = at + 1
    c.end = end
    c.depth = 2
    h.seen = 0
    h.method = 1
    h.status = 0
    h.size = 0
    h.index = 0
    h.low = 0
    h.high = 0
    while next_member(&c, &first, &key):
        if is_key(&key, "startTimestamp", 14):
            if not once(&h.seen, 1) or not read_int(&c, &span, -(1LL << 63), <long long>I64_MAX, &h.start):
                return False
        elif is_key(&key, "stopTimestamp", 13):
            if not once(&h.seen, 2) or not read_int(&c, &span, -(1LL << 63), <long long>I64_MAX, &h.stop):
                return False
        elif is_key(&key, "method", 6):
            if not once(&h.seen, 4) or not read_int(&c, &span, I32_MIN, I32_MAX, &h.method):
                return False
        elif is_key(&key, "statusCode", 10):
            if not once(&h.seen, 8) or not read_int(&c, &span, I32_MIN, I32_MAX, &h.status):
                return False
        elif is_key(&key, "contentLength", 13):
            if not once(&h.seen, 16) or not read_int(&c, &span, -(1LL << 63), <long long>I64_MAX, &h.size):
                return False
        elif is_key(&key, "instanceIndex", 13):
            if not once(&h.seen, 32) or not read_int(&c, &span, I32_MIN, I32_MAX, &h.index):
                return False
        elif is_key(&key, "applicationId", 13):
            if not once(&h.seen, 64) or c.p >= c.end or c.p[0] != 123:
                return False
            c.p += 1
            c.depth += 1
            inner_first = True
            while next_member(&c, &inner_first, &key):
                if is_key(&key, "low", 3):
                    if not once(&h.seen, 128) or not read_u64(&c, &span, &h.low):
                        return False
                elif is_key(&key, "high", 4):
                    if not once(&h.seen, 256) or not read_u64(&c, &span, &h.high):
                        return False
                elif folds_to(&key, "low high") or not skip_value(&c):
                    return False
            if c.depth < 0:
                return False
            c.depth -= 1
        elif folds_to(
            &key, "startTimestamp stopTimestamp method statusCode contentLength instanceIndex applicationId"
        ) or not skip_value(&c):
            return False
    return c.depth >= 0 and (h.seen & 3) == 3 and (h.seen & 64)


cdef bint scan_log(const uchar *at, const uchar *end, Log *m) noexcept nogil:
    cdef Cursor c
    cdef Span key, span
    cdef bint first = True
    c.p = at + 1
    c.end = end
    c.depth = 2
    m.seen = 0
    m.message_type = 1
    m.message.start = m.app_id.start = m.source_type.start = m.source_instance.start = at
    m.message.size = m.app_id.size = m.source_type.size = m.source_instance.size = 0
    while next_member(&c, &first, &key):
        if is_key(&key, "timestamp", 9):
            if not once(&m.seen, 1) or not read_int(&c, &span, -(1LL << 63), <long long>I64_MAX, &m.timestamp):
                return False
        elif is_key(&key, "message", 7):
            if not once(&m.seen, 2) or not read_plain_string(&c, &m.message):
                return False
        elif is_key(&key, "message_type", 12):
            if not once(&m.seen, 4) or not read_int(&c, &span, 1, 2, &m.message_type):
                return False
        elif is_key(&key, "app_id", 6):
            if not once(&m.seen, 8) or not read_plain_string(&c, &m.app_id):
                return False
        elif is_key(&key, "source_type", 11):
            if not once(&m.seen, 16) or not read_plain_string(&c, &m.source_type):
                return False
        elif is_key(&key, "source_instance", 15):
            if not once(&m.seen, 32) or not read_plain_string(&c, &m.source_instance):
                return False
        elif folds_to(&key, "timestamp message message_type app_id source_type source_instance") or not skip_value(&c):
            return False
    return c.depth >= 0 and (m.seen & 1)


cdef bint read_float(Cursor *c, Span *span, double *out):
    """A JSON number with a fraction or an exponent (orjson reads it as a float), finite."""
    if c.p >= c.end or not (c.p[0] == 45 or 48 <= c.p[0] <= 57):
        return False
    if not scan_number(c, span) or span.is_int:
        return False
    cdef char *stop = NULL
    # Python's correctly rounded strtod (the text is followed by , } or whitespace, so it stops there)
    out[0] = PyOS_string_to_double(<const char *>span.start, &stop, NULL)
    return stop == <char *>(span.start + span.size) and isfinite(out[0])


cdef int scan_container(const uchar *at, const uchar *end, Container *m) except -1:
    cdef Cursor c, probe
    cdef Span key, span
    cdef long long whole
    cdef bint first = True
    c.p = at + 1
    c.end = end
    c.depth = 2
    m.seen = 0
    m.index = 0
    m.cpu = 0.0
    m.memory = 0
    m.disk = 0
    m.memory_quota = 0
    m.disk_quota = 0
    m.app_id.start = at
    m.app_id.size = 0
    while next_member(&c, &first, &key):
        if is_key(&key, "applicationId", 13):
            if not once(&m.seen, 1) or not read_plain_string(&c, &m.app_id):
                return False
        elif is_key(&key, "instanceIndex", 13):
            if not once(&m.seen, 2) or not read_int(&c, &span, I32_MIN, I32_MAX, &m.index):
                return False
        elif is_key(&key, "cpuPercentage", 13):
            if not once(&m.seen, 4):
                return False
            # Go writes a whole value as an integer ("cpuPercentage":0); the reference takes float()
            # of it, which rounds to nearest as this C conversion does.
            probe = c
            if read_int(&probe, &span, -(1LL << 63), <long long>I64_MAX, &whole):
                c = probe
                m.cpu = <double>whole
            elif not read_float(&c, &span, &m.cpu):
                return False
        elif is_key(&key, "memoryBytes", 11):
            if not once(&m.seen, 8) or not read_int(&c, &span, 0, <long long>I64_MAX, &m.memory):
                return False
        elif is_key(&key, "diskBytes", 9):
            if not once(&m.seen, 16) or not read_int(&c, &span, 0, <long long>I64_MAX, &m.disk):
                return False
        elif is_key(&key, "memoryBytesQuota", 16):
            if not once(&m.seen, 32) or not read_int(&c, &span, 0, <long long>I64_MAX, &m.memory_quota):
                return False
        elif is_key(&key, "diskBytesQuota", 14):
            if not once(&m.seen, 64) or not read_int(&c, &span, 0, <long long>I64_MAX, &m.disk_quota):
                return False
        elif folds_to(
            &key,
            "applicationId instanceIndex cpuPercentage memoryBytes diskBytes memoryBytesQuota diskBytesQuota",
        ) or not skip_value(&c):
            return False
    return c.depth >= 0


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
    """Go's ``Duration.Seconds()`` (as :func:`refinery.transform.go_seconds`; C division truncates)."""
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
    """A record's base64 value -> what :func:`refinery.transform.convert` gives for it (a point or
    a ``Dropped``; the point at its identity time, :func:`refinery.identity.stamp_line`, with
    ``modulus`` = 10**digits), or ``None``: not handled here, take the reference path."""
    return convert_record(value, lookup, modulus)


def transform_run(list batch not None, Py_ssize_t index, key, lookup, dict by_time not None,
                  list lines not None, list origins not None, dropped, oldest_ms, long long modulus):
    """The records ``batch[index:]`` through the fast path, for as long as each one is a point with a
    timestamp no other point of the batch has, or a drop by policy: placed and counted exactly as
    :func:`refinery.pipeline.transform_batch` does (``by_time``, ``lines``, ``origins``, the
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
