"""The import directions of docs/architecture.md, enforced by reading imports with ast."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "dicomweb_server"

# layer -> layers it may import (besides itself)
ALLOWED: dict[str, set[str]] = {
    "config": set(),
    "errors": set(),
    "dicom": {"errors"},
    "storage": {"dicom", "errors"},
    "services": {"storage.interfaces", "dicom", "errors", "config"},
    "bootstrap": {
        "services",
        "storage",
        "dicom",
        "errors",
        "config",
        "dimse.scu",
        "dimse.syntaxes",
    },
    "web": {"services", "bootstrap", "dicom", "errors", "config", "__init__"},
    "workers": {"balanced_accept"},
    "balanced_accept": set(),
    "cli": {
        "services",
        "bootstrap",
        "dicom",
        "errors",
        "config",
        "workers",
        "__init__",
        "dimse",
        "hl7v2",
    },
    # The DIMSE adapter, like web: never storage, web or cli.
    "dimse": {"services", "bootstrap", "dicom", "errors", "config"},
    # The HL7 v2 / MLLP adapter, like dimse: never storage, web, dimse or cli.
    "hl7v2": {"services", "bootstrap", "dicom", "errors", "config"},
}


def _layer(path: Path) -> str:
    rel = path.relative_to(PACKAGE).with_suffix("")
    return rel.parts[0]


def _imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
        elif isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
    return [n.removeprefix("dicomweb_server.") for n in names if n.startswith("dicomweb_server")]


def _modules() -> list[Path]:
    return sorted(
        p for p in PACKAGE.rglob("*.py") if p.name != "__init__.py" or p.parent != PACKAGE
    )


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_follow_the_layers(path: Path) -> None:
    layer = _layer(path)
    allowed = ALLOWED[layer]
    for target in _imports(path):
        if target == "dicomweb_server":
            target = "__init__"
        top = target.split(".")[0]
        if top == layer:
            continue
        ok = top in allowed or any(target == a or target.startswith(a + ".") for a in allowed)
        assert ok, f"{path.relative_to(PACKAGE)} ({layer}) must not import {target}"


def test_every_module_belongs_to_a_layer() -> None:
    assert {_layer(p) for p in _modules()} <= set(ALLOWED)


def test_the_checker_sees_imports() -> None:
    """Guard against a vacuous test: the store service does import the storage interfaces."""
    assert "storage.interfaces" in _imports(PACKAGE / "services" / "store.py")
