"""Request bodies gzip-compressed by ISA-L, or by the standard library without it: both read back."""

from __future__ import annotations

import gzip

import pytest

from refinery.sinks import gzip_body as module
from support.unavailable import unavailable

BODY = b"".join(
    b"http_request,app=myapp,instance=%d,method=GET status_code=200 count=1i,duration=0.0%d %d\n"
    % (i % 7, i, 1_537_510_364_000_000_000 + i)
    for i in range(20_000)
)


def test_isal_is_what_runs() -> None:
    if module.implementation() != "isal":
        unavailable("python-isal is a dependency but is not importable")
    compressed = module.gzip_body(BODY)
    assert gzip.decompress(compressed) == BODY
    assert compressed[:2] == b"\x1f\x8b" and len(compressed) < len(BODY) / 4


def test_without_isal_the_standard_library_compresses(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(module, "_isal", None)
    assert module.implementation() == "zlib"
    compressed = module.gzip_body(BODY)
    assert gzip.decompress(compressed) == BODY
    assert compressed == gzip.compress(BODY, compresslevel=1)


@pytest.mark.parametrize("body", [b"", b"x", b"\n" * 3])
def test_tiny_bodies(body: bytes) -> None:
    assert gzip.decompress(module.gzip_body(body)) == body
