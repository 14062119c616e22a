#!/usr/bin/env python3
"""Fetch the pinned OHIF viewer build from the npm registry into viewer_static/dist/.

Stdlib only, so it runs before (and without) the virtual environment. The tarball of
``@ohif/app`` at an exact version is downloaded once into a cache folder, checked
against the registry's pinned ``integrity`` (Subresource Integrity form, sha512) and
its ``package/dist/`` unpacked. A stamp file records what was unpacked, so a second run
with nothing changed returns at once. Text assets are also written precompressed
(``.gz``) so the server can send them compressed without spending CPU per request.

Usage: scripts/fetch-viewer.py [--dest DIR] [--cache DIR] [--force]
"""

from __future__ import annotations

import argparse
import base64
import gzip
import hashlib
import os
import shutil
import sys
import tarfile
import tempfile
import urllib.request
from pathlib import Path

# Pinned: `npm view @ohif/app@3.13.2 dist.integrity`. Changing the version means
# changing the integrity too; nothing unverified is ever unpacked.
PACKAGE = "@ohif/app"
VERSION = "3.13.2"
INTEGRITY = (
    "sha512-WZdxmpmG7rqFgW9ZJLcbgr3XCtLi1KDNPoMaeY5PPe6j4G4fjEjjkycZM6C6Zk2F87BKxFfpq+jd5xXZB9E8EA=="
)
REGISTRY = os.environ.get("NPM_CONFIG_REGISTRY", "https://registry.npmjs.org").rstrip("/")
TARBALL = f"{REGISTRY}/{PACKAGE}/-/{PACKAGE.split('/')[-1]}-{VERSION}.tgz"

REPO = Path(__file__).resolve().parent.parent
STAMP_NAME = ".ohif-version"
# Worth compressing: text formats and wasm (which gzips to about a third).
COMPRESSIBLE = {".js", ".mjs", ".css", ".html", ".json", ".svg", ".map", ".wasm", ".txt"}
MIN_COMPRESS_BYTES = 1024


def integrity_of(path: Path) -> str:
    digest = hashlib.sha512()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return "sha512-" + base64.b64encode(digest.digest()).decode("ascii")


def download(cache: Path) -> Path:
    """The verified tarball, from the cache or the registry."""
    cache.mkdir(parents=True, exist_ok=True)
    target = cache / f"ohif-app-{VERSION}.tgz"
    if target.exists() and integrity_of(target) == INTEGRITY:
        return target
    print(f"fetch-viewer: downloading {TARBALL}", file=sys.stderr)
    fd, tmp_name = tempfile.mkstemp(dir=cache, suffix=".part")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(TARBALL, timeout=60) as resp:
            shutil.copyfileobj(resp, out, 1 << 20)
        got = integrity_of(tmp)
        if got != INTEGRITY:
            raise SystemExit(
                f"fetch-viewer: integrity mismatch for {PACKAGE}@{VERSION}: "
                f"expected {INTEGRITY}, got {got}"
            )
        tmp.replace(target)
    finally:
        tmp.unlink(missing_ok=True)
    return target


def unpack(tarball: Path, dest: Path) -> int:
    """Unpack ``package/dist/`` into ``dest`` (replaced whole); returns the file count."""
    staging = Path(tempfile.mkdtemp(prefix=".viewer-", dir=dest.parent))
    count = 0
    try:
        with tarfile.open(tarball, "r:gz") as tar:
            for member in tar:
                if not member.isfile() or not member.name.startswith("package/dist/"):
                    continue
                rel = Path(member.name[len("package/dist/") :])
                if rel.is_absolute() or ".." in rel.parts:
                    raise SystemExit(f"fetch-viewer: unsafe path in tarball: {member.name}")
                out = staging / rel
                out.parent.mkdir(parents=True, exist_ok=True)
                src = tar.extractfile(member)
                assert src is not None
                with src, open(out, "wb") as fh:
                    shutil.copyfileobj(src, fh, 1 << 20)
                count += 1
                if out.suffix in COMPRESSIBLE and member.size >= MIN_COMPRESS_BYTES:
                    precompress(out)
        if count == 0:
            raise SystemExit(f"fetch-viewer: no dist/ files in {tarball}")
        (staging / STAMP_NAME).write_text(INTEGRITY + "\n")
        if dest.exists():
            shutil.rmtree(dest)
        staging.rename(dest)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return count


def precompress(path: Path) -> None:
    data = path.read_bytes()
    packed = gzip.compress(data, compresslevel=9, mtime=0)
    if len(packed) < len(data) * 0.9:
        path.with_name(path.name + ".gz").write_bytes(packed)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dest", type=Path, default=REPO / "viewer_static" / "dist")
    parser.add_argument(
        "--cache",
        type=Path,
        default=Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
        / "dicomweb-server",
    )
    parser.add_argument("--force", action="store_true", help="unpack even if up to date")
    args = parser.parse_args()
    dest: Path = args.dest.resolve()
    stamp = dest / STAMP_NAME
    if not args.force and stamp.exists() and stamp.read_text().strip() == INTEGRITY:
        return 0
    dest.parent.mkdir(parents=True, exist_ok=True)
    count = unpack(download(args.cache), dest)
    print(f"fetch-viewer: {PACKAGE}@{VERSION} ({count} files) in {dest}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
