"""`python -m bench.score`: how fast `digit-mlops score` reads a folder of pictures, in process.

Renders N real test digits as PNGs into label folders (`0/`..`9/`) under a temp dir: the 10,000 of
`data/prepared/test.npz` when `dvc repro` has made it, else the committed fixture's, repeated with
whole-pixel shifts so no two files are alike. Then runs the real command, `digit-mlops score DIR
--labels --out ...` (a subprocess: imports, model load and all), and reports the rate its own
summary gives (decoding and model calls, after the model is loaded) beside the wall time, with the
machine and the load it ran under. The model is whatever `digit-mlops` loads by default
(DIGIT_MODEL_TAG or mnist-cnn:latest in BENTOML_HOME). Prints one JSON line last.

    python -m bench.score                       # 10,000 28×28 PNGs (MNIST as PNG, white on black)
    python -m bench.score --side 280 --n 2000   # phone-sized: dark ink on white, 280×280
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from bench import machine
from common import cpu

ROOT = Path(__file__).resolve().parent.parent
TEST_SPLIT = ROOT / "data" / "prepared" / "test.npz"
FIXTURE = ROOT / "tests" / "fixtures" / "mnist-sample.npz"
SUMMARY = re.compile(r"scored ([\d,]+) images? from ([\d,]+) files? in ([\d.]+) s")
ACCURACY = re.compile(r"accuracy ([\d.]+)%")
SHIFTS = [(dy, dx) for dy in (0, 1, -1, 2, -2) for dx in (0, 1, -1, 2, -2)]


def digits(n: int) -> tuple[np.ndarray, np.ndarray, str]:
    """n test digits and labels, and where they came from; past the source's size each copy is
    moved by a pixel or two (a new file, the same digit)."""
    source = TEST_SPLIT if TEST_SPLIT.exists() else FIXTURE
    with np.load(source) as d:
        if "x" in d:  # prepare's split: x (n, 28, 28), y (n,)
            x, y = d["x"].reshape(-1, 28, 28), d["y"]
        else:  # the fixture: all of it
            x, y = (
                np.concatenate([d["x_test"], d["x_train"]]),
                np.concatenate([d["y_test"], d["y_train"]]),
            )
    copies = -(-n // len(x))
    x = np.concatenate([np.roll(x, SHIFTS[k % len(SHIFTS)], axis=(1, 2)) for k in range(copies)])
    return x[:n], np.tile(y, copies)[:n], str(source.relative_to(ROOT))


def render(x: np.ndarray, y: np.ndarray, folder: Path, side: int) -> None:
    """Each digit as a PNG: as MNIST stores it at 28 px, else dark ink on white, side × side."""
    for i, (image, label) in enumerate(zip(x, y, strict=True)):
        path = folder / str(int(label)) / f"{i:05d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        picture = Image.fromarray(image)
        if side != image.shape[0]:
            picture = Image.fromarray(255 - image).resize((side, side), Image.Resampling.BILINEAR)
        picture.save(path)


def measure(n: int, side: int, jobs: int | None) -> dict:
    x, y, source = digits(n)
    with tempfile.TemporaryDirectory(prefix="digit-bench-score-") as tmp:
        folder = Path(tmp) / "digits"
        render(x, y, folder, side)
        argv = [str(Path(sys.executable).parent / "digit-mlops"), "score", str(folder)]
        argv += ["--labels", "--out", str(Path(tmp) / "out.csv")]
        argv += ["--jobs", str(jobs)] if jobs else []
        load = os.getloadavg()[0]
        started = time.perf_counter()
        proc = subprocess.run(argv, capture_output=True, text=True, check=False)
        wall = time.perf_counter() - started
    found = SUMMARY.search(proc.stdout)
    if proc.returncode != 0 or not found:
        raise SystemExit(
            f"bench.score: {' '.join(argv)} failed ({proc.returncode}):\n"
            f"{proc.stdout[-2000:]}{proc.stderr[-2000:]}"
        )
    images, scoring_s = int(found[1].replace(",", "")), float(found[3])
    accuracy = ACCURACY.search(proc.stdout)
    return {
        "images": images,
        "side": side,
        "source": source,
        "jobs": jobs or 1,
        "scoring_s": scoring_s,
        "images_per_s": images / scoring_s,
        "wall_s": wall,
        "wall_images_per_s": images / wall,
        "accuracy": round(float(accuracy[1]) / 100, 4) if accuracy else None,
        "cpu": f"{cpu.model()} ({' '.join(cpu.vector_extensions()) or 'no AVX2'}), "
        f"{len(os.sched_getaffinity(0))} cores",
        "load_average_at_start": round(load, 2),
        "commit": machine.commit(),
        "versions": machine.versions(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=10_000, help="pictures (default 10,000)")
    parser.add_argument("--side", type=int, default=28, help="picture side in px (default 28)")
    parser.add_argument("--jobs", type=int, help="digit-mlops --jobs (default: its own)")
    args = parser.parse_args()
    result = measure(args.n, args.side, args.jobs)
    print(
        f"digit-mlops score: {result['images']:,} PNGs of {args.side}×{args.side} px in "
        f"{result['scoring_s']:.1f} s ({result['images_per_s']:,.0f} images/s); "
        f"{result['wall_s']:.1f} s wall with start-up ({result['wall_images_per_s']:,.0f}/s); "
        f"{result['jobs']} decoding processes; {result['cpu']}, "
        f"load {result['load_average_at_start']}",
        flush=True,
    )
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
