"""OHIF in headless Chromium: time to the first image and to all slices of a CT study.

Ours against Orthanc's DICOMweb plugin, serving the same generated CT series (default
300 slices of 512x512, 16-bit, uncompressed) to the same OHIF build. OHIF's files come
from our server in both cases (a second, empty instance of ours hosts OHIF for Orthanc,
with an app-config pointing at Orthanc's DICOMweb root), so only the DICOMweb traffic
differs. Cross-origin calls to Orthanc need CORS, which Orthanc does not send: for
this measurement only, Chromium runs with --disable-web-security and the page's CSP is
bypassed, for both targets alike.

Each run uses a fresh browser context: OHIF's code is loaded once from "/" (so the
JavaScript download is not timed), then the clock starts and the viewer route is
opened. "First image": the viewport canvas shows a non-blank image. "All slices": every
frame of the series has been received (OHIF's stack prefetch fetches them all).

    .venv/bin/python -m benchmarks.viewer [--slices 300] [--runs 3] [--out FILE]
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from .targets import OrthancTarget, OursTarget

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-web-security",
]
LIT = """() => {
  const c = document.querySelector('canvas.cornerstone-canvas');
  if (!c || !c.width) return false;
  const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
  let lit = 0;
  for (let i = 0; i < d.length; i += 16) if (d[i] > 60) lit++;
  const f = lit / (d.length / 16);
  return f > 0.01 && f < 0.99;
}"""


def make_study(slices: int, size: int) -> tuple[str, list[bytes]]:
    from pydicom import dcmread

    from tests.viewer_studies import ct_series

    parts = ct_series(
        slices, patient_name="Bench^CT", patient_id="BENCH", accession="BENCH-CT", size=size
    )
    study = str(dcmread(io.BytesIO(parts[0])).StudyInstanceUID)
    return study, parts


def stow(base_url: str, parts: list[bytes]) -> None:
    boundary = "bench-viewer-boundary"
    with httpx.Client(timeout=300) as client:
        for start in range(0, len(parts), 50):
            chunk = parts[start : start + 50]
            body = (
                b"".join(
                    b"--"
                    + boundary.encode()
                    + b"\r\nContent-Type: application/dicom\r\n\r\n"
                    + p
                    + b"\r\n"
                    for p in chunk
                )
                + f"--{boundary}--\r\n".encode()
            )
            response = client.post(
                f"{base_url}/studies",
                content=body,
                headers={
                    "Content-Type": f'multipart/related; type="application/dicom"; '
                    f"boundary={boundary}",
                    "Accept": "application/dicom+json",
                },
            )
            if response.status_code != 200:
                raise RuntimeError(f"STOW to {base_url}: {response.status_code} {response.text}")


def orthanc_app_config(path: Path, orthanc_root: str) -> Path:
    text = (REPO / "viewer_static" / "app-config.js").read_text()
    origin_expr = "window.location.origin + (window.dicomwebServerRoot || '/dicom-web')"
    if origin_expr not in text:
        raise RuntimeError("viewer_static/app-config.js changed: update benchmarks/viewer.py")
    text = text.replace(origin_expr, json.dumps(orthanc_root))
    # Orthanc's plugin has no /thumbnail resource: thumbnails from frames, as OHIF's docs
    # configure it for Orthanc.
    text = text.replace("thumbnailRendering: 'thumbnail'", "thumbnailRendering: 'wadors'")
    path.write_text(text)
    return path


def measure(browser: Any, host: str, study: str, slices: int, cap: float) -> dict[str, float]:
    context = browser.new_context(viewport={"width": 1280, "height": 800}, bypass_csp=True)
    page = context.new_page()
    frames: set[str] = set()
    errors: list[str] = []

    def finished(request: Any) -> None:
        if "/frames/" in request.url:
            response = request.response()
            if response is not None and response.status == 200:
                frames.add(request.url)
            else:
                errors.append(request.url)

    page.on("requestfinished", finished)
    try:
        page.goto(host + "/")
        page.wait_for_selector("text=Study List", timeout=60_000)
        frames.clear()
        t0 = time.perf_counter()
        page.goto(f"{host}/viewer?StudyInstanceUIDs={study}")
        page.wait_for_function(LIT, polling=50, timeout=cap * 1000)
        first = time.perf_counter() - t0
        deadline = time.monotonic() + cap
        while len(frames) < slices and time.monotonic() < deadline:
            page.wait_for_timeout(50)
        all_loaded = time.perf_counter() - t0 if len(frames) >= slices else float("nan")
        return {
            "first_image_s": round(first, 3),
            "all_slices_s": round(all_loaded, 3),
            "frames_received": len(frames),
            "frame_errors": len(errors),
        }
    finally:
        context.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--cap", type=float, default=180.0, help="seconds per run, at most")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    study, parts = make_study(args.slices, args.size)
    results: dict[str, Any] = {"slices": args.slices, "size": args.size, "runs": {}}
    with tempfile.TemporaryDirectory(prefix="bench-viewer-") as tmp:
        work = Path(tmp)
        ours = OursTarget(work / "ours")
        orthanc = OrthancTarget(work / "orthanc")
        host = None
        try:
            ours.start()
            orthanc.start()
            config = orthanc_app_config(work / "orthanc-app-config.js", orthanc.base_url)
            host = OursTarget(work / "host", extra_args=["--viewer-app-config", str(config)])
            host.start()
            t = time.perf_counter()
            stow(ours.base_url, parts)
            results["stow_ours_s"] = round(time.perf_counter() - t, 2)
            t = time.perf_counter()
            stow(orthanc.base_url, parts)
            results["stow_orthanc_s"] = round(time.perf_counter() - t, 2)
            sites = {
                "ours": f"http://127.0.0.1:{ours.port}",
                "orthanc": f"http://127.0.0.1:{host.port}",
            }
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
                try:
                    for run in range(args.runs):
                        for name, site in sites.items():  # alternate, so load drifts hit both
                            result = measure(browser, site, study, args.slices, args.cap)
                            results["runs"].setdefault(name, []).append(result)
                            print(f"run {run + 1} {name}: {result}", file=sys.stderr)
                finally:
                    browser.close()
        finally:
            for target in (host, orthanc, ours):
                if target is not None:
                    target.stop()
    for name, runs in results["runs"].items():
        results[name] = {
            key: statistics.median(r[key] for r in runs)
            for key in ("first_image_s", "all_slices_s")
        }
    text = json.dumps(results, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
