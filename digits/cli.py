"""`digit-mlops score PATH...` (or `python -m digits score ...`): the model on your own files.

Exit status: 0 every file scored; 1 some gave no digit (each listed in the report with its
reason); 2 nothing could be scored as asked (a bad option or labels file, no model, no service).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from digits.inputs import Item

if TYPE_CHECKING:
    from digits.client import Client
    from digits.model import Model

AUTO = "auto"  # --labels without a file: the data's own labels
CSV, JSONL = "csv", "jsonl"


def parser() -> argparse.ArgumentParser:
    main = argparse.ArgumentParser(
        prog="digit-mlops", description="Handwritten digits, from the command line."
    )
    commands = main.add_subparsers(dest="command", required=True)
    score = commands.add_parser(
        "score",
        help="score pictures and arrays with the champion",
        description="Score pictures (PNG, JPEG, WebP, GIF, BMP, TIFF), .npy/.npz arrays and IDX "
        "files, folders recursively, with the packaged champion in this process or a running "
        "service (--url). Pictures are made MNIST-like exactly as /predict_image makes them.",
    )
    score.add_argument("paths", nargs="+", metavar="PATH", help="files and folders to score")
    score.add_argument("--out", "-o", metavar="FILE", help="where rows go (default: stdout)")
    score.add_argument(
        "--format",
        choices=(CSV, JSONL),
        help="csv or jsonl (default: from --out's suffix, .jsonl/.ndjson → jsonl; else csv)",
    )
    score.add_argument("--seen", metavar="DIR", type=Path, help="write the 28×28s the model saw")
    score.add_argument(
        "--labels",
        nargs="?",
        const=AUTO,
        metavar="FILE.csv",
        help="evaluate: labels from folders 0..9, IDX1 or .npz labels, or a CSV (file,label)",
    )
    score.add_argument("--worst", type=int, default=10, metavar="N", help="wrong answers listed")
    score.add_argument(
        "--url", help="a running service (e.g. http://127.0.0.1:3000) instead of in process"
    )
    score.add_argument(
        "--model",
        metavar="TAG|URI",
        help="in process: a BentoML tag (default: DIGIT_MODEL_TAG or mnist-cnn:latest, the "
        "packaged champion) or an MLflow URI (models:/mnist-cnn@champion)",
    )
    score.add_argument(
        "--batch", type=int, metavar="N", help="images per model call (256) or request (64)"
    )
    score.add_argument(
        "--jobs",
        type=int,
        default=1,
        metavar="N",
        help="processes decoding pictures (default 1: on 2 cores more were slower; try it on more)",
    )
    score.add_argument(
        "--progress", action="store_true", help="a progress bar even when stderr is no terminal"
    )
    return main


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    cli = parser()
    args = cli.parse_args(argv)
    if args.labels not in (None, AUTO) and not args.labels.lower().endswith(".csv"):
        args.paths.insert(0, args.labels)  # `--labels photos/`: a path, not a labels file
        args.labels = AUTO
    for name in ("batch", "jobs", "worst"):
        if (value := getattr(args, name)) is not None and value < (0 if name == "worst" else 1):
            cli.error(f"--{name} must be at least {0 if name == 'worst' else 1}")
    if args.url and args.model:
        cli.error("--url scores with the service's model; --model is for in process")
    return score(args, cli)


def score(args: argparse.Namespace, cli: argparse.ArgumentParser) -> int:
    import httpx

    from digits.client import Refused
    from digits.labels import LabelsError, labeller
    from digits.score import report, score_files

    try:
        labels = labeller(Path(args.labels) if args.labels not in (None, AUTO) else None)
    except (LabelsError, OSError) as exc:
        cli.error(f"--labels: {exc}")
    fmt = args.format or (JSONL if (args.out or "").endswith((".jsonl", ".ndjson")) else CSV)
    to_stdout = args.out in (None, "-")
    with ExitStack() as stack:
        try:
            model = _model(args)
        except Exception as exc:  # no model, no service: say which and stop
            print(f"digit-mlops: {exc}{_hint(args)}", file=sys.stderr)
            return 2
        if hasattr(model, "close"):
            stack.callback(model.close)
        out = sys.stdout if to_stdout else stack.enter_context(_open(args.out))
        bar = _Progress(args.progress or sys.stderr.isatty())
        stack.callback(bar.close)
        try:
            summary = score_files(
                args.paths,
                model,
                out,
                fmt=fmt,
                batch=args.batch,
                labels=labels if args.labels else None,
                seen=args.seen,
                worst=args.worst,
                jobs=args.jobs,
                progress=bar.start,
            )
        except (Refused, httpx.HTTPError) as exc:  # the service stopped answering mid-run
            bar.close()
            print(f"digit-mlops: {args.url}: {exc}; the rows so far are written", file=sys.stderr)
            return 2
    text = report(summary, labels=bool(args.labels))
    print(text, end="", file=sys.stderr if to_stdout else sys.stdout)
    if summary.files == 0:
        return 1
    return 1 if summary.failed else 0


def _open(path: str) -> TextIO:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return open(path, "w", newline="", encoding="utf-8")


def _model(args: argparse.Namespace) -> Model | Client:
    """The service's client (--url), the registry's model (--model models:/...) or the packaged
    one: the DIGIT_MODEL_TAG a `make serve` would serve, by default."""
    if args.url:
        from digits.client import Client

        return Client(args.url, api_key=os.environ.get("DIGIT_API_KEY") or None)
    from digits.model import from_mlflow, load

    if args.model and args.model.startswith("models:/"):
        return from_mlflow(args.model)
    from service.settings import Settings

    return load(args.model or Settings.from_env().model_tag)


def _hint(args: argparse.Namespace) -> str:
    if args.url:
        return f" (is the service up at {args.url}? `make serve` starts one)"
    where = os.environ.get("BENTOML_HOME") or "~/bentoml"
    if args.model and args.model.startswith("models:/"):
        return " (MLFLOW_TRACKING_URI names the registry; `make repro` fills it)"
    return f" (the BentoML store is {where}; `make package` puts the champion there)"


class _Progress:
    """tqdm on stderr, one step per file, the images counted beside it; off unless wanted."""

    def __init__(self, enabled: bool) -> None:
        self.enabled, self.bar, self.last, self.images = enabled, None, None, 0

    def start(self, files: int) -> Callable[[Item], None]:
        if self.enabled:
            from tqdm import tqdm

            self.bar = tqdm(total=files, unit="file", file=sys.stderr, dynamic_ncols=True)
        return self.step

    def step(self, item: Item) -> None:
        if self.bar is None:
            return
        self.images += 1
        if item.path != self.last:
            if self.last is not None:
                self.bar.update(1)
            self.last = item.path
        if self.images % 64 == 0:
            self.bar.set_postfix_str(f"{self.images:,} images", refresh=False)

    def close(self) -> None:
        if self.bar is not None:
            if self.last is not None:
                self.bar.update(1)
            self.bar.set_postfix_str(f"{self.images:,} images")
            self.bar.close()
            self.bar = None
