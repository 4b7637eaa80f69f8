# Included by _record_fastpath.pyx (one extension module; Cython `include`): the JSON scanner.
# It checks a document against the JSON grammar and reads spans, numbers and keys, without the GIL.

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
