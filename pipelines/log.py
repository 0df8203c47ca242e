"""Stage banners and clean failures, so `dvc repro` output reads as a story, not a traceback."""

from __future__ import annotations

import sys
from typing import NoReturn

from pipelines.params import Params, ParamsError, load
from pipelines.redact import redact, redact_tracebacks


def banner(stage: str) -> None:
    print(f"\n===== stage: {stage} =====", file=sys.stderr, flush=True)


def fail(stage: str, err: BaseException) -> NoReturn:
    """Exit non-zero with the error's own message; DVC then stops and keeps the old outputs."""
    print(f"\n{stage} FAILED: {redact(str(err))}", file=sys.stderr, flush=True)
    raise SystemExit(1)


def start(stage: str) -> Params:
    """Announce the stage and read params.yaml, failing the stage cleanly if it is bad; from here
    on an uncaught traceback is printed with URL passwords redacted."""
    redact_tracebacks()
    banner(stage)
    try:
        return load()
    except ParamsError as err:
        fail(stage, err)
