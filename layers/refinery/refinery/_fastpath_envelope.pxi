# Included by _record_fastpath.pyx (one extension module; Cython `include`): one envelope.
# Which fields of a nozzle envelope and of its event body the fast path reads, and their checks.

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
