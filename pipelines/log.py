"""Stage banners and clean failures, so `dvc repro` output reads as a story, not a traceback."""

from __future__ import annotations

import sys
from typing import NoReturn


def banner(stage: str) -> None:
    print(f"\n===== stage: {stage} =====", file=sys.stderr, flush=True)


def fail(stage: str, err: BaseException) -> NoReturn:
    """Exit non-zero with the error's own message; DVC then stops and keeps the old outputs."""
    print(f"\n{stage} FAILED: {err}", file=sys.stderr, flush=True)
    raise SystemExit(1)
