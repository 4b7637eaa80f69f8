"""The runtime's dependencies are declared once and shipped as declared.

``pyproject.toml``'s ``dependencies`` are what the runtime package needs; ``layers/dependencies/
requirements.txt`` is what the dependencies layer installs for Lambda. They must agree (the same
packages with the same lower bounds), except the AWS SDK the Lambda runtime provides; and every
third-party package a runtime module imports must be one of them (or provided by the runtime), so a
module cannot import a package that Lambda will not have.
"""

from __future__ import annotations

import ast
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "layers/refinery/refinery"
# In the python3.12 managed runtime: the AWS SDK, and SnapStart's runtime hooks.
RUNTIME_PROVIDED = {"boto3", "botocore", "snapshot-restore-py"}
# Import name -> distribution, where they differ (or where a package comes with another one).
DISTRIBUTION_OF = {
    "yaml": "pyyaml",
    "google": "protobuf",
    "urllib3": "requests",  # requests' own dependency, used for its exceptions and retries
    "snapshot_restore_py": "snapshot-restore-py",
}


def _pyproject_requirements() -> dict[str, Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return {canonicalize_name(r.name): r for r in map(Requirement, project["dependencies"])}


def _layer_requirements() -> dict[str, Requirement]:
    lines = (ROOT / "layers/dependencies/requirements.txt").read_text().splitlines()
    found = [Requirement(line) for line in (x.split("#")[0].strip() for x in lines) if line]
    return {canonicalize_name(r.name): r for r in found}


def _lower_bound(requirement: Requirement) -> str | None:
    return next((s.version for s in requirement.specifier if s.operator == ">="), None)


def test_the_layer_installs_exactly_the_declared_runtime_dependencies() -> None:
    declared, layer = _pyproject_requirements(), _layer_requirements()
    assert set(layer) == set(declared) - RUNTIME_PROVIDED
    assert {n: _lower_bound(r) for n, r in layer.items()} == {n: _lower_bound(declared[n]) for n in layer}
    assert all(_lower_bound(r) for r in layer.values()), "every layer requirement states its lower bound"


def test_every_third_party_import_of_the_runtime_is_declared_or_provided_by_lambda() -> None:
    declared = set(_pyproject_requirements()) | RUNTIME_PROVIDED
    imported: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom) and not node.level
                else []
            )
            for name in names:
                top = name.split(".")[0]
                if top and top != "refinery" and top not in sys.stdlib_module_names and top != "__future__":
                    imported.setdefault(top, set()).add(str(path.relative_to(PACKAGE)))
    undeclared = {
        top: sorted(where)
        for top, where in imported.items()
        if canonicalize_name(DISTRIBUTION_OF.get(top, top)) not in declared
    }
    assert undeclared == {}
    # and nothing declared goes unused: aws-xray-sdk is imported by Powertools' Tracer, boto3 by the
    # tooling (replay, config --check) and, where Lambda provides it, by nobody on the cold path
    used = {canonicalize_name(DISTRIBUTION_OF.get(top, top)) for top in imported}
    assert set(_pyproject_requirements()) - used == {"aws-xray-sdk", "boto3"}
