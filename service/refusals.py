"""Every refusal the service can give, in one table: its reason label, HTTP status and meaning.

Handlers and the ASGI layers refuse by raising or building `Rejected(reason, message)`; the status
comes from REASONS, the message says what to fix, and the endpoint's usage hint (`usage_hints`)
is appended so every refusal also says how to send the request right. docs/api.md lists the same
table, and a test keeps the two equal.
"""

from __future__ import annotations

from typing import NamedTuple


class Reason(NamedTuple):
    status: int
    meaning: str


REASONS: dict[str, Reason] = {
    # the request itself (the ASGI guard, and BentoML's own parsing rewritten by it)
    "empty_body": Reason(400, "nothing was sent"),
    "malformed_json": Reason(400, "the body is not JSON"),
    "missing_field": Reason(400, "a required field is missing"),
    "invalid_field": Reason(400, "a field has the wrong type or value (e.g. an unknown `scale`)"),
    "bad_request": Reason(400, "BentoML could not read the request otherwise"),
    "too_large": Reason(
        413,
        "the body is over `DIGIT_MAX_BODY_BYTES` (refused before it is "
        "read), or a picture over `DIGIT_MAX_UPLOAD_BYTES`",
    ),
    # pixel arrays
    "wrong_shape": Reason(400, "not 28×28 (or (n, 28, 28)), or an empty batch"),
    "not_numbers": Reason(400, "strings, booleans, null or ragged rows instead of numbers"),
    "not_finite": Reason(400, "NaN or infinity"),
    "out_of_range": Reason(400, 'outside 0-255 (or 0-1 with `scale` "0-1")'),
    "bad_scale": Reason(
        400,
        'a `scale` other than "0-255" or "0-1" (library callers; the '
        "API's own schema answers `invalid_field`)",
    ),
    "batch_too_large": Reason(413, "more than `DIGIT_MAX_BATCH` images in one request"),
    "not_npy": Reason(400, "the `array` file is not a readable .npy"),
    "wrong_dtype": Reason(400, "the .npy is not uint8"),
    # pictures
    "not_an_image": Reason(400, "not a PNG, JPEG, WebP, GIF, BMP or TIFF, or pixels it cannot map"),
    "truncated_image": Reason(400, "a picture whose data ends early or is corrupt"),
    "too_many_pixels": Reason(
        413,
        "a picture declaring more than `DIGIT_MAX_PIXELS` pixels "
        "(a decompression bomb, refused from its header)",
    ),
    "blank_image": Reason(
        422, "a well-formed picture with no digit in it (blank, or too little contrast)"
    ),
    "bad_data_url": Reason(400, "not a base64 `data:image/...` URL"),
    # the service
    "overloaded": Reason(
        503, "more than `DIGIT_MAX_QUEUE` images already waiting (with `Retry-After`)"
    ),
}


class Rejected(ValueError):
    """Bad input the caller can fix: a reason from REASONS and a message saying what to change.

    str(exc) is the message; `status` is the reason's HTTP status.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.status = REASONS[reason].status

    def __reduce__(self) -> tuple[type[Rejected], tuple[str, str]]:
        # the default would rebuild it from `message` alone and fail (e.g. across processes)
        return (type(self), (self.reason, self.message))


def usage_hints(max_batch: int) -> dict[str, str]:
    """Per prediction path, one line saying how to send a request it takes."""
    return {
        "/predict": 'Send JSON {"image": <28 lists of 28 numbers 0-255, white ink on black>}.',
        "/predict_batch": 'Send JSON {"images": [<28×28 array>, ...]} with at most '
        f"{max_batch} images.",
        "/predict_npy": "Send multipart/form-data with a file field 'array' holding np.save() of "
        f"uint8 (n, 28, 28), n ≤ {max_batch}.",
        "/predict_image": "Send multipart/form-data with a file field 'image' (PNG, JPEG, WebP, "
        "GIF, BMP or TIFF).",
        "/predict_canvas": 'Send JSON {"data_url": "data:image/png;base64,..."} as '
        "canvas.toDataURL() gives it.",
        "/explain": 'Send JSON {"image": <28 lists of 28 numbers 0-255>}, e.g. the "seen" field '
        "of a /predict_image or /predict_canvas reply.",
    }
