"""scripts/fetch-viewer.py: integrity-checked download, unpack of dist/, instant re-runs.

The registry is replaced by a file:// URL to a tarball made here, so the real download
path (urllib, the sha512 check, tar extraction) runs without the network.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import io
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO

SCRIPT = REPO / "scripts" / "fetch-viewer.py"


def load_script() -> Any:
    """The script as a module (Any: its constants are patched by the tests)."""
    spec = importlib.util.spec_from_file_location("fetch_viewer", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def make_tarball(path: Path, files: dict[str, bytes]) -> str:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    path.write_bytes(buffer.getvalue())
    return "sha512-" + base64.b64encode(hashlib.sha512(buffer.getvalue()).digest()).decode()


@pytest.fixture
def script(tmp_path: Path) -> tuple[Any, Path]:
    module = load_script()
    index = b"<!doctype html><script src='/app.js'></script>" + b" " * 2000
    tarball = tmp_path / "app.tgz"
    module.INTEGRITY = make_tarball(
        tarball,
        {
            "package/package.json": b"{}",
            "package/dist/index.html": index,
            "package/dist/app.0123456789abcdef.js": b"var a = 1;\n" * 500,
            "package/dist/assets/logo.png": b"\x89PNG" + bytes(100),
        },
    )
    module.TARBALL = tarball.as_uri()
    return module, tmp_path


def test_pinned_version_and_integrity_are_committed() -> None:
    module = load_script()
    assert module.VERSION == "3.13.2"
    assert module.INTEGRITY.startswith("sha512-")
    assert module.TARBALL.endswith("/@ohif/app/-/app-3.13.2.tgz")


def test_unpacks_dist_with_precompressed_copies(script: tuple[Any, Path]) -> None:
    module, tmp = script
    dest = tmp / "dist"
    tarball = module.download(tmp / "cache")
    assert module.unpack(tarball, dest) == 3
    assert (dest / "index.html").read_bytes().startswith(b"<!doctype html>")
    assert (dest / "assets" / "logo.png").exists()
    assert not (dest / "package.json").exists()
    assert (dest / "app.0123456789abcdef.js.gz").exists()
    assert not (dest / "assets" / "logo.png.gz").exists()
    assert (dest / ".ohif-version").read_text().strip() == module.INTEGRITY
    # Cached: a second download uses the verified file, even with the source gone.
    Path(module.TARBALL.removeprefix("file://")).unlink()
    assert module.download(tmp / "cache") == tarball


def test_integrity_mismatch_unpacks_nothing(script: tuple[Any, Path]) -> None:
    module, tmp = script
    module.INTEGRITY = "sha512-" + base64.b64encode(bytes(64)).decode()
    with pytest.raises(SystemExit, match="integrity mismatch"):
        module.download(tmp / "cache")
    assert list((tmp / "cache").iterdir()) == []


def test_rerun_with_an_up_to_date_stamp_is_instant(tmp_path: Path) -> None:
    module = load_script()
    dest = tmp_path / "dist"
    dest.mkdir()
    (dest / ".ohif-version").write_text(module.INTEGRITY + "\n")
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--dest", str(dest), "--cache", str(tmp_path / "c")],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert not (tmp_path / "c").exists()  # nothing downloaded
