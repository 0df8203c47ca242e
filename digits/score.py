"""Score many images: batched model calls, one output row per image, a summary, an evaluation.

The model is a `Predict`: uint8 (n, 28, 28) → one (digit, confidence, probabilities) per image and
the registry version that answered. In process it is the loaded model; with a URL, `/predict_npy`
of the running service (pictures are decoded here with the service's own module either way, so
both give the same answers). Probabilities and confidence are written rounded to 6 decimals, as
the API rounds its probabilities.
"""

from __future__ import annotations

import csv
import heapq
import json
import re
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import numpy as np
from PIL import Image

from digits.client import Client, Refused
from digits.inputs import Item, service_limits, walk
from digits.model import Model

DECIMALS = 6  # the service's rounding of probabilities (service/schemas.py)
LOCAL_BATCH = 256  # images per model call in process (the service's own call size)
REMOTE_BATCH = 64  # images per /predict_npy request (a server allowing fewer says so: see remote)
RETRIES = 5  # a 503 (the service's queue is full) is retried this often, a second apart
Answer = tuple[int, float, list[float]]  # digit, confidence, probabilities
Predict = Callable[[np.ndarray], tuple[list[Answer], str]]


def _answers(probs: np.ndarray) -> list[Answer]:
    out = []
    for p in probs:
        values = p.astype(float).tolist()
        digit = int(np.argmax(p))
        out.append((digit, values[digit], values))
    return out


def in_process(model: Model) -> Predict:
    """The loaded model as a `Predict`."""
    return lambda images: (_answers(model.probabilities(images)), model.version)


def remote(client: Client, batch: int) -> Predict:
    """A running service as a `Predict`: at most `batch` images per `/predict_npy` request,
    fewer once the server says its limit (413 `batch_too_large` names it; a body over its byte
    limit halves the batch); a 503 is waited out."""
    size = [batch]

    def predict(images: np.ndarray) -> tuple[list[Answer], str]:
        answers, version, start, tries = [], "", 0, 0
        while start < len(images):
            part = images[start : start + size[0]]
            try:
                reply = client.predict_npy(part)
            except Refused as exc:
                if exc.reason in ("batch_too_large", "too_large") and len(part) > 1:
                    size[0] = _limit(exc.message) or len(part) // 2
                    continue
                if exc.status == 503 and tries < RETRIES:
                    tries += 1
                    time.sleep(1.0)
                    continue
                raise
            answers += [
                (p["digit"], p["confidence"], p["probabilities"]) for p in reply["predictions"]
            ]
            version, start, tries = str(reply["model_version"]), start + len(part), 0
        return answers, version

    return predict


def _limit(message: str) -> int | None:
    """The image count in "... the limit is 64 (DIGIT_MAX_BATCH) ..."."""
    match = re.search(r"the limit is ([\d,]+) \(DIGIT_MAX_BATCH\)", message)
    return int(match[1].replace(",", "")) if match else None


@dataclass(frozen=True)
class Row:
    """One scored image, as written."""

    file: str
    digit: int
    confidence: float
    probabilities: list[float]
    model_version: str
    label: int | None = None
    seen: str | None = None

    @property
    def correct(self) -> bool | None:
        return None if self.label is None else self.digit == self.label


class Writer:
    """Rows to CSV (`file,digit,confidence,p0..p9,model_version[,label,correct][,seen]`) or JSON
    Lines (the same fields, `probabilities` as a list)."""

    def __init__(self, out: IO[str], fmt: str, labels: bool, seen: bool) -> None:
        self.out, self.fmt = out, fmt
        self.extra = (["label", "correct"] if labels else []) + (["seen"] if seen else [])
        if fmt == "csv":
            self.csv = csv.writer(out, lineterminator="\n")
            probs = [f"p{d}" for d in range(10)]
            self.csv.writerow(["file", "digit", "confidence", *probs, "model_version", *self.extra])

    def write(self, row: Row) -> None:
        extra = {"label": row.label, "correct": row.correct, "seen": row.seen}
        if self.fmt == "csv":
            cells = [f"{v:.{DECIMALS}f}" for v in (row.confidence, *row.probabilities)]
            rest = [_cell(extra[k]) for k in self.extra]
            self.csv.writerow([row.file, row.digit, *cells, row.model_version, *rest])
        else:
            record = {
                "file": row.file,
                "digit": row.digit,
                "confidence": row.confidence,
                "probabilities": row.probabilities,
                "model_version": row.model_version,
                **{k: extra[k] for k in self.extra},
            }
            self.out.write(json.dumps(record) + "\n")


def _cell(value: object) -> str:
    """A CSV cell: empty for none, `true`/`false` as JSON writes them."""
    if value is None:
        return ""
    return str(value).lower() if isinstance(value, bool) else str(value)


@dataclass
class Summary:
    """What a run did: counts, failures with their reasons, and the evaluation's tallies."""

    files: int = 0
    skipped: int = 0
    scored: int = 0
    seconds: float = 0.0
    versions: set[str] = field(default_factory=set)
    failed: list[Item] = field(default_factory=list)
    confusion: np.ndarray = field(default_factory=lambda: np.zeros((10, 10), np.int64))
    worst: list[tuple[float, int, Row]] = field(default_factory=list)  # a min-heap, by confidence
    unlabelled: int = 0

    @property
    def labelled(self) -> int:
        return int(self.confusion.sum())

    @property
    def accuracy(self) -> float:
        return float(np.trace(self.confusion)) / self.labelled if self.labelled else float("nan")

    def count(self, row: Row, keep: int) -> None:
        self.scored += 1
        self.versions.add(row.model_version)
        if row.label is None:
            self.unlabelled += 1
            return
        self.confusion[row.label, row.digit] += 1
        if not row.correct and keep > 0:
            entry = (row.confidence, -self.scored, row)  # ties: the first found stays
            if len(self.worst) < keep:
                heapq.heappush(self.worst, entry)
            else:
                heapq.heappushpop(self.worst, entry)

    def worst_rows(self) -> list[Row]:
        """The wrong answers given with the most confidence, most confident first."""
        return [row for _, _, row in sorted(self.worst, reverse=True)]


def seen_path(item: Item, folder: Path) -> Path:
    """Where `--seen` puts an item's 28×28: its path under `folder` (`a/b.jpg` → `a/b.jpg.png`,
    `x.npz:x_test[3]` → `x.npz-x_test-3.png`), never outside it."""
    parts = [p for p in item.path.parts[1 if item.path.is_absolute() else 0 :]]
    parts = ["__" if p == ".." else p for p in parts]
    tail = item.part.replace(":", "-").replace("[", "-").replace("]", "")
    return folder.joinpath(*parts[:-1], f"{parts[-1]}{tail}.png")


def score(
    items: Iterable[Item],
    predict: Predict,
    writer: Writer,
    *,
    batch: int,
    label_of: Callable[[Item], int | None] | None = None,
    seen: Path | None = None,
    worst: int = 10,
    progress: Callable[[Item], None] = lambda item: None,
) -> Summary:
    """Score every item, `batch` images per model call, writing rows in input order; failed items
    are kept in the summary with their reason. `label_of` (for `--labels`) gives each its label."""
    summary = Summary()
    started = time.perf_counter()
    for chunk in _batches(items, batch, summary, progress):
        answers, version = predict(np.stack([item.pixels for item in chunk]))
        for item, (digit, confidence, probs) in zip(chunk, answers, strict=True):
            where = None
            if seen is not None:
                path = seen_path(item, seen)
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(item.pixels).save(path)
                where = str(path)
            row = Row(
                item.name,
                int(digit),
                round(float(confidence), DECIMALS),
                [round(float(v), DECIMALS) for v in probs],
                version,
                label_of(item) if label_of else None,
                where,
            )
            writer.write(row)
            summary.count(row, worst)
    summary.seconds = time.perf_counter() - started
    return summary


def _batches(
    items: Iterable[Item], size: int, summary: Summary, progress: Callable[[Item], None]
) -> Iterator[list[Item]]:
    chunk: list[Item] = []
    for item in items:
        progress(item)
        if not item.ok:
            summary.failed.append(item)
            continue
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def report(summary: Summary, labels: bool) -> str:
    """The run in words: counts, every failure and its reason, and with labels the evaluation."""
    rate = summary.scored / summary.seconds if summary.seconds > 0 else 0.0
    versions = ", ".join(sorted(summary.versions)) or "none"
    lines = [
        f"scored {_n(summary.scored, 'image')} from {_n(summary.files, 'file')} in "
        f"{summary.seconds:.1f} s ({rate:,.0f} images/s), model version {versions}"
    ]
    if summary.failed:
        lines.append(f"failed: {_n(len(summary.failed), 'image')} gave no digit")
        lines += [f"  {item.name}: {item.reason}: {item.message}" for item in summary.failed]
    if summary.skipped:
        lines.append(
            f"skipped {_n(summary.skipped, 'file')} in the folders that no name marks as a "
            "picture, .npy, .npz or IDX file"
        )
    if labels:
        lines += _evaluation(summary)
    return "\n".join(lines) + "\n"


def _n(count: int, noun: str) -> str:
    return f"{count:,} {noun}{'' if count == 1 else 's'}"


def _evaluation(summary: Summary) -> list[str]:
    n = summary.labelled
    if not n:
        return ["no labels found: name folders 0..9, or give --labels FILE.csv"]
    right = int(np.trace(summary.confusion))
    lines = [f"accuracy {summary.accuracy:.2%} ({right:,} of {n:,} labelled images)"]
    if summary.unlabelled:
        lines[0] += f"; {summary.unlabelled:,} scored without a label"
    width = max(5, len(f"{summary.confusion.max():,}") + 1)
    lines.append("confusion (rows: label, columns: predicted digit)")
    lines.append("     " + "".join(f"{d:>{width}}" for d in range(10)))
    for label in range(10):
        counts = "".join(f"{c:>{width},}" for c in summary.confusion[label])
        lines.append(f"  {label}  {counts}")
    wrong = summary.worst_rows()
    if wrong:
        lines.append(f"worst {len(wrong)} (wrong answers, most confident first)")
        lines += [
            f"  {row.file}: label {row.label}, predicted {row.digit} ({row.confidence:.1%})"
            for row in wrong
        ]
    return lines


def score_files(
    paths: Iterable[str | Path],
    model: Model | Client,
    out: IO[str],
    *,
    fmt: str = "csv",
    batch: int | None = None,
    labels: Callable[[Item], int | None] | None = None,
    seen: Path | None = None,
    worst: int = 10,
    jobs: int = 1,
    progress: Callable[[int], Callable[[Item], None]] | None = None,
) -> Summary:
    """Score every picture and array under `paths` with a loaded `Model` or a service's `Client`,
    writing one row per image to `out` (`fmt` "csv" or "jsonl"). `batch`: images per model call
    or request (default 256 in process, 64 to a service); `labels`: an item's label, for an
    evaluation (`digits.labels.labeller`); `seen`: a folder for the 28×28s; `jobs`: processes
    that decode pictures; `progress(files)` gives a callback called with each item."""
    if isinstance(model, Client):
        predict, size = remote(model, batch or REMOTE_BATCH), batch or REMOTE_BATCH
    else:
        predict, size = in_process(model), batch or LOCAL_BATCH
    limits = model.limits if isinstance(model, Model) else service_limits()
    items, files, skipped = walk(paths, limits, jobs)
    writer = Writer(out, fmt, labels is not None, seen is not None)
    tick = progress(files) if progress else (lambda item: None)
    summary = score(
        items, predict, writer, batch=size, label_of=labels, seen=seen, worst=worst, progress=tick
    )
    summary.files, summary.skipped = files, skipped
    return summary
