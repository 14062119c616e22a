"""Deterministic synthetic corpus, cached on disk under benchmarks/.cache/.

Three groups of Explicit VR Little Endian Part 10 files:
  ct     one CT series of N slices, 512x512 int16
  small  many 64x64 instances (MR, CR, DX, MG, US, PT, NM, CT) across many studies
  mf     one XA multiframe instance, 512x512 uint8, N frames
A manifest.json lists every instance with the attributes the workloads need.
"""

from __future__ import annotations

import os
import random
import sys
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

import orjson

from .datasets import UID_ROOT, Image, Patient, Series, Study, build_dataset, write_dataset
from .names import make_patients, random_date, random_time, referring

CORPUS_VERSION = 1
CACHE_DIR = Path(__file__).resolve().parent / ".cache"


@dataclass(frozen=True)
class CorpusSpec:
    mode: str
    ct_slices: int
    small_instances: int
    small_studies: int
    mf_frames: int

    @property
    def mode_code(self) -> int:
        return {"full": 1, "quick": 2}.get(self.mode, 9)


FULL = CorpusSpec("full", ct_slices=300, small_instances=10_000, small_studies=2_000, mf_frames=200)
QUICK = CorpusSpec("quick", ct_slices=30, small_instances=500, small_studies=100, mf_frames=20)


@dataclass(frozen=True)
class Record:
    group: str  # "ct" | "small" | "mf"
    path: str  # relative to the corpus directory
    study: str
    series: str
    sop: str
    modality: str
    patient_id: str
    patient_name: str
    study_date: str
    accession: str
    size: int
    rows: int
    cols: int
    bits: int
    frames: int


@dataclass
class Corpus:
    root: Path
    spec: CorpusSpec
    records: list[Record]
    generation_seconds: float = 0.0
    _by_series: dict[str, list[Record]] = field(default_factory=dict, repr=False)

    def group(self, name: str) -> list[Record]:
        return [r for r in self.records if r.group == name]

    def path(self, rec: Record) -> Path:
        return self.root / rec.path

    def by_series(self) -> dict[str, list[Record]]:
        if not self._by_series:
            out: dict[str, list[Record]] = defaultdict(list)
            for r in self.records:
                out[r.series].append(r)
            self._by_series = dict(out)
        return self._by_series

    def by_study(self) -> dict[str, list[Record]]:
        out: dict[str, list[Record]] = defaultdict(list)
        for r in self.records:
            out[r.study].append(r)
        return dict(out)

    @property
    def total_bytes(self) -> int:
        return sum(r.size for r in self.records)


class _Uids:
    def __init__(self, spec: CorpusSpec) -> None:
        self.prefix = f"{UID_ROOT}{CORPUS_VERSION}.{spec.mode_code}."
        self.counters = {1: 0, 2: 0, 3: 0}

    def next(self, kind: int) -> str:
        self.counters[kind] += 1
        return f"{self.prefix}{kind}.{self.counters[kind]}"


_MODALITY_WEIGHTS = {"MR": 30, "CR": 20, "DX": 12, "US": 10, "CT": 10, "PT": 6, "NM": 6, "MG": 6}
_PAIRED = {"PT": "CT", "NM": "CT", "CT": "CT", "MR": "MR", "CR": "CR", "DX": "DX", "US": "US"}
_DESCRIPTIONS = {
    "MR": "MRI BRAIN W/O CONTRAST",
    "CR": "XR CHEST 2 VIEWS",
    "DX": "XR HAND 3 VIEWS",
    "US": "US ABDOMEN COMPLETE",
    "CT": "CT CHEST WITH CONTRAST",
    "PT": "PET/CT WHOLE BODY",
    "NM": "NM MYOCARDIAL PERFUSION",
    "MG": "MAMMO SCREENING BILATERAL",
    "XA": "XA CORONARY",
}


def _small_image(modality: str, variant: int) -> Image:
    if modality == "US":
        return Image(64, 64, bits=8, variant=variant)
    return Image(64, 64, bits=16, signed=modality == "CT", variant=variant)


def _instance_counts(spec: CorpusSpec, rng: random.Random) -> list[int]:
    n = spec.small_studies
    counts = [spec.small_instances // n] * n
    for i in range(spec.small_instances - sum(counts)):
        counts[i % n] += 1
    for _ in range(n // 2):  # move instances between studies: keeps the total exact
        a, b, k = rng.randrange(n), rng.randrange(n), rng.randint(1, 3)
        if counts[a] - k >= 1:
            counts[a] -= k
            counts[b] += k
    return counts


class _Writer:
    def __init__(self, root: Path, spec: CorpusSpec) -> None:
        self.root = root
        self.uids = _Uids(spec)
        self.records: list[Record] = []

    def study(
        self, rng: random.Random, patient_idx: int, patients: list[Patient], modality: str
    ) -> Study:
        n = self.uids.counters[1] + 1
        return Study(
            uid=self.uids.next(1),
            patient=patients[patient_idx],
            date=random_date(rng),
            time=random_time(rng),
            accession=f"ACC{CORPUS_VERSION}{n:07d}",
            study_id=str(n),
            description=_DESCRIPTIONS[modality],
            referring=referring(rng),
        )

    def write(
        self,
        group: str,
        rel: str,
        series: Series,
        number: int,
        image: Image,
        slice_pos: float | None = None,
    ) -> None:
        sop = self.uids.next(3)
        ds = build_dataset(series, sop, number, image, slice_pos)
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        write_dataset(ds, str(path))
        st = series.study
        self.records.append(
            Record(
                group,
                rel,
                st.uid,
                series.uid,
                sop,
                series.modality,
                st.patient.patient_id,
                st.patient.name,
                st.date,
                st.accession,
                path.stat().st_size,
                image.rows,
                image.cols,
                image.bits,
                image.frames,
            )
        )


def generate(spec: CorpusSpec, root: Path) -> Corpus:
    t0 = time.perf_counter()
    rng = random.Random(20240601 + spec.mode_code)
    n_patients = max(10, spec.small_studies * 2 // 3)
    patients = make_patients(n_patients, rng, prefix=f"PID{spec.mode_code}")
    w = _Writer(root, spec)

    ct_study = w.study(rng, 0, patients, "CT")
    ct_series = Series(w.uids.next(2), ct_study, "CT", 1, "AXIAL 1.25mm STANDARD")
    for i in range(spec.ct_slices):
        img = Image(512, 512, bits=16, signed=True, variant=i % 6)
        w.write("ct", f"ct/{i:04d}.dcm", ct_series, i + 1, img, slice_pos=-300.0 + 1.25 * i)
    _progress("ct", spec.ct_slices, t0)

    mf_study = w.study(rng, 3, patients, "XA")
    mf_series = Series(w.uids.next(2), mf_study, "XA", 1, "LEFT CORONARY CINE")
    w.write("mf", "mf/multiframe.dcm", mf_series, 1, Image(512, 512, bits=8, frames=spec.mf_frames))
    _progress("multiframe", 1, t0)

    counts = _instance_counts(spec, rng)
    mods, weights = list(_MODALITY_WEIGHTS), list(_MODALITY_WEIGHTS.values())
    idx = 0
    for s, count in enumerate(counts):
        modality = rng.choices(mods, weights)[0]
        patient_idx = s if s < 3 else rng.randrange(n_patients)
        study = w.study(rng, patient_idx, patients, modality)
        n_series = min(count, rng.choice([1, 1, 2, 2, 3]))
        sizes = [count // n_series + (1 if k < count % n_series else 0) for k in range(n_series)]
        for k, size in enumerate(sizes):
            mod = modality if k == 0 else _PAIRED.get(modality, modality)
            series = Series(w.uids.next(2), study, mod, k + 1, f"{mod} SERIES {k + 1}")
            for j in range(size):
                rel = f"small/{idx // 1000:02d}/{idx:05d}.dcm"
                w.write("small", rel, series, j + 1, _small_image(mod, idx % 4))
                idx += 1
        if (s + 1) % 500 == 0:
            _progress("small", idx, t0)
    _progress("small", idx, t0)
    return Corpus(root, spec, w.records, time.perf_counter() - t0)


def _progress(what: str, n: int, t0: float) -> None:
    print(f"  corpus: {what} {n} written ({time.perf_counter() - t0:.1f}s)", file=sys.stderr)


def corpus_dir(spec: CorpusSpec) -> Path:
    return CACHE_DIR / f"corpus-v{CORPUS_VERSION}-{spec.mode}"


def load_or_generate(spec: CorpusSpec) -> Corpus:
    root = corpus_dir(spec)
    manifest = root / "manifest.json"
    if manifest.exists():
        data = orjson.loads(manifest.read_bytes())
        if data.get("spec") == asdict(spec) and data.get("version") == CORPUS_VERSION:
            recs = [Record(**r) for r in data["records"]]
            return Corpus(root, spec, recs, data.get("generation_seconds", 0.0))
    print(f"generating {spec.mode} corpus in {root} ...", file=sys.stderr)
    root.mkdir(parents=True, exist_ok=True)
    corpus = generate(spec, root)
    payload = {
        "version": CORPUS_VERSION,
        "spec": asdict(spec),
        "generation_seconds": corpus.generation_seconds,
        "records": [asdict(r) for r in corpus.records],
    }
    tmp = root / "manifest.json.tmp"
    tmp.write_bytes(orjson.dumps(payload))
    os.replace(tmp, manifest)
    return corpus
