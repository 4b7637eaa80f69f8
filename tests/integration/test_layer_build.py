"""The refinery layer as `sam build` makes it: its Makefile run the way SAM runs it (a scratch copy of
layers/refinery, ARTIFACTS_DIR set), then the compiled fast path checked for the Lambda runtime —
CPython 3.12, x86_64, glibc <= 2.34 — and run under Python 3.12 against the pure-Python path.

Needs Python 3.12 (scripts/ensure-python312.sh), gcc, objdump and the venv's Cython; under CI=true a
missing one fails the test. Running it under 3.12 also needs the dependencies built for 3.12: the
DependenciesLayer of `sam build` (which `make test` runs before pytest).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from refinery.devtools.unavailable import unavailable

ROOT = Path(__file__).resolve().parents[2]
RUNTIME_SUFFIX = ".cpython-312-x86_64-linux-gnu.so"
MAX_GLIBC = (2, 34)  # Amazon Linux 2023, the python3.12 runtime's OS


def _python312() -> str:
    found = subprocess.run(
        ["bash", str(ROOT / "scripts/ensure-python312.sh")], capture_output=True, text=True, check=False
    )
    if found.returncode != 0:
        unavailable(f"no Python 3.12: {found.stderr.strip()}")
    return str(Path(found.stdout.strip()) / "python3.12")


@pytest.fixture(scope="module")
def built_layer(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    for tool in ("gcc", "objdump", "make"):
        if shutil.which(tool) is None:
            unavailable(f"{tool} is not installed")
    cython = Path(sys.executable).parent / "cython"
    if not cython.exists():
        unavailable(f"Cython is not installed in {cython.parent}")
    py312 = _python312()
    scratch = tmp_path_factory.mktemp("scratch") / "refinery-layer"
    shutil.copytree(ROOT / "layers/refinery", scratch)  # as SAM copies ContentUri, __pycache__ and all
    artifacts = tmp_path_factory.mktemp("artifacts")
    env = {
        **os.environ,
        "ARTIFACTS_DIR": str(artifacts),
        "CYTHON": str(cython),
        "PY312": py312,
        "REFINERY_REQUIRE_FASTPATH": "1",
    }
    done = subprocess.run(
        ["make", "--makefile", str(ROOT / "layers/refinery/Makefile"), "build-RefineryLayer"],
        cwd=scratch,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, f"layer build failed:\n{done.stdout}\n{done.stderr}"
    return artifacts / "python", py312


def test_the_layer_holds_the_package_and_one_extension_for_the_runtime(built_layer: tuple[Path, str]) -> None:
    python_dir, _ = built_layer
    package = python_dir / "refinery"
    assert (package / "pipeline.py").is_file() and (package / "data").is_dir()
    extensions = sorted(p.name for p in package.rglob("*.so"))
    assert extensions == [f"_record_fastpath{RUNTIME_SUFFIX}"]
    leftovers = [
        p for p in package.rglob("*") if p.suffix in (".c", ".pyx", ".pyc") or p.name == "__pycache__"
    ]
    assert leftovers == []


def test_the_extension_is_x86_64_and_needs_no_newer_glibc_than_the_runtime(
    built_layer: tuple[Path, str],
) -> None:
    python_dir, _ = built_layer
    extension = python_dir / "refinery" / f"_record_fastpath{RUNTIME_SUFFIX}"
    header = subprocess.run(["objdump", "-f", str(extension)], capture_output=True, text=True, check=True)
    assert "elf64-x86-64" in header.stdout
    symbols = subprocess.run(["objdump", "-T", str(extension)], capture_output=True, text=True, check=True)
    versions = {tuple(int(p) for p in v.split(".")) for v in re.findall(r"GLIBC_([0-9.]+)", symbols.stdout)}
    assert versions, "no versioned glibc symbols found: objdump output changed?"
    assert max(versions) <= MAX_GLIBC, f"needs glibc {max(versions)}, the runtime has {MAX_GLIBC}"


CHECK_UNDER_312 = """
import sys
from refinery.devtools.unavailable import unavailable
from refinery import speedups
from refinery.devtools import bench
from refinery.pipeline import transform_batch

assert sys.version_info[:2] == (3, 12), sys.version
assert speedups.IMPLEMENTATION == "compiled", speedups.UNAVAILABLE_REASON
assert speedups.transform_run.__module__ == "refinery._record_fastpath"
work = bench.build_workload(3000, 300, 100)
store = bench.new_store(work.snapshot)
bench.start_invocation(store)
fast = transform_batch(work.event, store)
bench.start_invocation(store)
pure = transform_batch(work.event, store, fast_path=False)
assert fast.lines == pure.lines, (len(fast.lines), len(pure.lines))
assert len(fast.lines) == work.expected_points
assert fast.result.summary() | {"seconds": 0} == pure.result.summary() | {"seconds": 0}
print(len(fast.lines))
"""


def test_the_runtime_build_gives_the_pure_python_lines_under_python_312(
    built_layer: tuple[Path, str],
) -> None:
    python_dir, py312 = built_layer
    dependencies = ROOT / ".aws-sam/build/DependenciesLayer/python"
    if not (dependencies / "orjson").is_dir():
        unavailable(f"the dependencies built for Python 3.12 are not in {dependencies} (run `make build`)")
    env = {**os.environ, "PYTHONPATH": f"{python_dir}{os.pathsep}{dependencies}", "PYTHONNOUSERSITE": "1"}
    env.pop("REFINERY_PURE_PYTHON", None)
    done = subprocess.run(
        [py312, "-c", CHECK_UNDER_312], env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr
    assert int(done.stdout.strip()) > 2500
