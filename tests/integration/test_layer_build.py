"""The refinery layer as `sam build` makes it: its Makefile run the way SAM runs it (a scratch copy of
layers/refinery, ARTIFACTS_DIR set), then the compiled fast path checked for the Lambda runtime —
CPython 3.12, x86_64, glibc <= 2.34 — and run under Python 3.12 against the pure-Python path.

Needs Python 3.12 (scripts/ensure-python312.sh), gcc, objdump and the venv's Cython; under CI=true a
missing one fails the test. Running it under 3.12 also needs the dependencies built for 3.12: the
DependenciesLayer of `sam build` (which `make test` runs before pytest).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from support.unavailable import unavailable

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
    assert (package / "pipeline.py").is_file()
    # exactly the runtime package's modules: the tooling (tools/refinery_tools) and test helpers stay out
    source = ROOT / "layers/refinery/refinery"
    shipped = sorted(str(p.relative_to(package)) for p in package.rglob("*.py"))
    assert shipped == sorted(str(p.relative_to(source)) for p in source.rglob("*.py"))
    extensions = sorted(p.name for p in package.rglob("*.so"))
    assert extensions == [f"_record_fastpath{RUNTIME_SUFFIX}"]
    leftovers = [p for p in package.rglob("*") if p.suffix in (".c", ".pyx", ".pxi")]
    assert leftovers == []
    # bytecode for the runtime only: one hash-based .pyc per module (test_lambda_emulation.py checks them)
    pycs = sorted(p.name for p in package.rglob("*.pyc"))
    assert pycs and all(name.endswith(".cpython-312.pyc") for name in pycs)
    assert len(pycs) == len(list(package.rglob("*.py")))


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


# Only the runtime package is in the layer (no devtools): the workload comes from files the test writes.
CHECK_UNDER_312 = """
import json, sys
from refinery import speedups
from refinery.metadata.store import FileSnapshotSource, MetadataStore
from refinery.pipeline import convert_batch

assert sys.version_info[:2] == (3, 12), sys.version
assert speedups.IMPLEMENTATION == "compiled", speedups.UNAVAILABLE_REASON
assert speedups.convert_run.__module__ == "refinery._record_fastpath"
event_path, snapshot_path, expected = sys.argv[1], sys.argv[2], int(sys.argv[3])
with open(event_path) as handle:
    event = json.load(handle)
store = MetadataStore(FileSnapshotSource(snapshot_path))
store.begin_invocation()
fast = convert_batch(event, store)
store.begin_invocation()
pure = convert_batch(event, store, fast_path=False)
assert fast.lines == pure.lines, (len(fast.lines), len(pure.lines))
assert len(fast.lines) == expected
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
    from refinery_tools.dev import workload

    work = workload.build_workload(3000, 300, 100)
    files = python_dir.parent / "workload"
    files.mkdir(exist_ok=True)
    (files / "event.json").write_text(json.dumps(work.event))
    (files / "apps.json.gz").write_bytes(work.snapshot)
    env = {**os.environ, "PYTHONPATH": f"{python_dir}{os.pathsep}{dependencies}", "PYTHONNOUSERSITE": "1"}
    env.pop("REFINERY_PURE_PYTHON", None)
    argv = [str(files / "event.json"), str(files / "apps.json.gz"), str(work.expected_points)]
    command = [py312, "-c", CHECK_UNDER_312, *argv]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    assert int(done.stdout.strip()) > 2500
