"""Caps applied before any costly work, so a hostile upload costs little."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Limits:
    max_bytes: int = 5 * 1024 * 1024  # encoded upload size
    max_pixels: int = 40_000_000  # declared width*height; refuses decompression bombs
    max_batch: int = 1024  # items in one batch request


DEFAULT_LIMITS = Limits()
