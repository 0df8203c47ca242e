"""Canvas exports: 'data:image/png;base64,...' (HTMLCanvasElement.toDataURL()) -> a picture.

The string's length is checked against the upload limit before anything is decoded.
"""

from __future__ import annotations

import base64
import binascii

import numpy as np

from service.inputs.limits import DEFAULT_LIMITS, Limits
from service.inputs.pictures import from_image_bytes
from service.refusals import Rejected


def from_data_url(url: str, limits: Limits = DEFAULT_LIMITS) -> np.ndarray:
    """'data:image/png;base64,...' (HTMLCanvasElement.toDataURL()) -> uint8 (28, 28)."""
    return from_image_bytes(_data_url_bytes(url, limits), limits)


def check_data_url(url: object, limits: Limits = DEFAULT_LIMITS) -> str:
    """The base64 payload of an image data URL, its type, length and header checked (cheap:
    nothing is decoded), so a request can be refused before the picture is handed on."""
    example = "data:image/png;base64,iVBORw0..."
    if not isinstance(url, str):
        raise Rejected("bad_data_url", f"image must be a data URL string like {example}")
    longest = limits.max_bytes * 4 // 3 * 102 // 100 + 1024  # base64, line breaks, header
    if len(url) > longest:
        raise Rejected(
            "too_large",
            f"data URL is {len(url):,} characters, more than a {limits.max_bytes:,}-byte image "
            "encodes to; send a smaller or more compressed picture",
        )
    header, comma, payload = url.partition(",")
    params = [part.strip().lower() for part in header.split(";")]
    if not comma or not params[0].startswith("data:"):
        raise Rejected("bad_data_url", f"image must be a data URL like {example}")
    if not params[0].removeprefix("data:").startswith("image/") or "base64" not in params[1:]:
        raise Rejected(
            "bad_data_url",
            f"data URL must carry base64 image content (got {header[:60]!r}); send {example}",
        )
    return payload


def _data_url_bytes(url: object, limits: Limits) -> bytes:
    """The decoded payload of a base64 image data URL; its length is checked before decoding."""
    payload = "".join(check_data_url(url, limits).split())
    payload += "=" * (-len(payload) % 4)
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise Rejected(
            "bad_data_url",
            "data URL's base64 is invalid (characters outside A-Z a-z 0-9 + / =, or cut short); "
            "send the string exactly as toDataURL() returns it",
        ) from exc
