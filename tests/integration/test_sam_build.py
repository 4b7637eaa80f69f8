"""The documented deploy path, `sam build`, as a user runs it: it ships the compiled fast path or fails
saying what to install, unless the user opts out explicitly (REFINERY_ALLOW_PURE_PYTHON=1).

SAM prints a makefile build's stdout and shows its stderr only when the build fails, so a warning on
stderr was lost and "Build Succeeded" shipped the pure-Python path. Each case runs the real `sam build`
(the layer only: `sam build RefineryLayer`, the same builder) in a copy of the project, with a PATH
holding Python 3.12 (which `sam build` needs for the functions anyway) but no Cython.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from support.unavailable import unavailable

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
EXTENSION = "_record_fastpath.cpython-312-x86_64-linux-gnu.so"


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of what `sam build` reads: the template, the layers, the functions and the scripts."""
    copy = tmp_path_factory.mktemp("checkout")
    ignore = shutil.ignore_patterns("__pycache__", "*.so", "*.c", "*.egg-info", ".aws-sam")
    for name in ("layers", "functions", "scripts"):
        shutil.copytree(ROOT / name, copy / name, ignore=ignore)
    shutil.copy2(ROOT / "template.yaml", copy / "template.yaml")
    return copy


@pytest.fixture(scope="module")
def path_without_cython() -> str:
    found = subprocess.run(
        ["bash", str(ROOT / "scripts/ensure-python312.sh")], capture_output=True, text=True, check=False
    )
    if found.returncode != 0:
        unavailable(f"no Python 3.12 for `sam build`: {found.stderr.strip()}")
    for tool in ("gcc", "objdump", "make"):
        if shutil.which(tool) is None:
            unavailable(f"{tool} is not installed")
    system = [d for d in ("/usr/local/bin", "/usr/bin", "/bin") if not (Path(d) / "cython").exists()]
    return os.pathsep.join([found.stdout.strip(), *system])


def sam_build(project: Path, path: str, **env: str) -> tuple[int, str, Path]:
    out = project / f"build-{len(list(project.glob('build-*')))}"
    inherited = ("CYTHON", "REFINERY_REQUIRE_FASTPATH", "REFINERY_ALLOW_PURE_PYTHON")
    environ = {k: v for k, v in os.environ.items() if k not in inherited}
    environ.update({"PATH": path, "SAM_CLI_TELEMETRY": "0", **env})
    done = subprocess.run(
        [str(Path(sys.executable).parent / "sam"), "build", "RefineryLayer", "--build-dir", str(out)],
        cwd=project,
        env=environ,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    return done.returncode, done.stdout + done.stderr, out / "RefineryLayer" / "python" / "refinery"


def test_without_cython_sam_build_fails_saying_what_to_install(
    project: Path, path_without_cython: str
) -> None:
    code, output, package = sam_build(project, path_without_cython)
    assert code != 0, output
    assert "Build Failed" in output and "Cython not found" in output
    assert "pip install Cython" in output and "make setup" in output
    assert "REFINERY_ALLOW_PURE_PYTHON=1 sam build" in output
    assert not list(package.glob("*.so"))


def test_the_pure_python_layer_only_when_asked_for_and_said_so(
    project: Path, path_without_cython: str
) -> None:
    code, output, package = sam_build(project, path_without_cython, REFINERY_ALLOW_PURE_PYTHON="1")
    assert code == 0, output
    assert "Build Succeeded" in output
    assert "NOTICE: Cython not found" in output and "pure-Python" in output  # SAM shows stdout
    assert (package / "pipeline.py").is_file() and not list(package.glob("*.so"))
    code, output, _ = sam_build(  # make build and CI insist, whatever the environment says
        project, path_without_cython, REFINERY_ALLOW_PURE_PYTHON="1", REFINERY_REQUIRE_FASTPATH="1"
    )
    assert code != 0 and "Cython not found" in output


def test_after_make_setup_sam_build_ships_the_compiled_fast_path(
    project: Path, path_without_cython: str
) -> None:
    venv = ROOT / ".venv"
    if not (venv / "bin" / "cython").exists():
        unavailable(f"no Cython in {venv} (run `make setup`)")
    (project / ".venv").symlink_to(venv)  # what `make setup` leaves in the checkout
    try:
        code, output, package = sam_build(project, path_without_cython)
    finally:
        (project / ".venv").unlink()
    assert code == 0, output
    assert f"build-fastpath: built {EXTENSION}" in output
    assert [p.name for p in package.glob("*.so")] == [EXTENSION]
