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
    "unsupported_media": Reason(
        415,
        "a JSON endpoint sent anything but `application/json` (a form, `text/plain`, none), or a "
        "file endpoint anything but `multipart/form-data`",
    ),
    "slow_body": Reason(408, "the body did not arrive within `DIGIT_BODY_TIMEOUT_S`"),
    "empty_body": Reason(400, "nothing was sent"),
    "malformed_json": Reason(400, "the body is not JSON"),
    "missing_field": Reason(400, "a required field is missing"),
    "invalid_field": Reason(400, "a field has the wrong type or value (e.g. an unknown `scale`)"),
    "bad_request": Reason(400, "BentoML could not read the request otherwise"),
    "bad_multipart": Reason(
        400, "a malformed multipart body: no boundary, cut short, unnamed or over 8 parts"
    ),
    "not_a_file": Reason(400, "the file field sent as a text value (a URL is never fetched)"),
    "bad_filename": Reason(400, "a file name over 200 characters or with a NUL"),
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
    "bad_scale": Reason(400, 'a `scale` other than "0-255" or "0-1"'),
    "batch_too_large": Reason(413, "more than `DIGIT_MAX_BATCH` images in one request"),
    "not_npy": Reason(
        400,
        "the `array` file is not a readable .npy: a zip/.npz, a pickle, a bad header, or a shape "
        "its bytes do not hold",
    ),
    "wrong_dtype": Reason(400, "the .npy is not uint8"),
    # pictures
    "not_an_image": Reason(400, "not a PNG, JPEG, WebP, GIF, BMP or TIFF, or pixels it cannot map"),
    "truncated_image": Reason(400, "a picture whose data ends early or is corrupt"),
    "too_many_pixels": Reason(
        413,
        "a picture declaring more than `DIGIT_MAX_PIXELS` pixels "
        "(a decompression bomb, refused from its header)",
    ),
    "too_costly": Reason(
        413,
        "a picture whose decoding took over `DIGIT_DECODE_TIMEOUT_S` of CPU or "
        "`DIGIT_DECODE_MEMORY_MB` (e.g. thousands of progressive scans), stopped there",
    ),
    "blank_image": Reason(
        422, "a well-formed picture with no digit in it (blank, or too little contrast)"
    ),
    "bad_data_url": Reason(400, "not a base64 `data:image/...` URL"),
    # exposure
    "unknown_host": Reason(
        400,
        "a `Host` header naming none of localhost, 127.0.0.1, [::1] and `DIGIT_ALLOWED_HOSTS` "
        "(DNS rebinding), or none at all",
    ),
    "unauthorized": Reason(
        401, "an API key is set and the request sent none, or another (with `WWW-Authenticate`)"
    ),
    "key_required": Reason(
        403,
        "a prediction or /metrics request that arrived on a non-loopback address of a service "
        "with no `DIGIT_API_KEY`",
    ),
    # the connection
    "url_too_long": Reason(
        414, "the request line alone is over `DIGIT_MAX_HEADER_BYTES` (then the connection closes)"
    ),
    "headers_too_large": Reason(
        431, "request line and headers over `DIGIT_MAX_HEADER_BYTES` (then the connection closes)"
    ),
    "header_timeout": Reason(
        408, "the headers did not arrive within `DIGIT_HEADER_TIMEOUT_S` (a slow or stalled client)"
    ),
    "too_many_connections": Reason(
        503,
        "the worker already holds `DIGIT_MAX_CONNECTIONS` connections: answered at accept, "
        "with `Retry-After`",
    ),
    # feedback (service/feedback.py)
    "bad_label": Reason(
        400,
        "a feedback `label` that is not a whole number 0-9 or null (booleans and strings are "
        'refused), or null ("not sure") for an answer at least `DIGIT_FEEDBACK_QUEUE_BELOW` '
        "confident",
    ),
    "bad_prediction_id": Reason(
        400,
        "a `prediction_id` that is malformed, or does not sign these pixels, digit, version, time "
        "and confidence (forged or altered)",
    ),
    "expired_prediction": Reason(
        410, "a `prediction_id` older than `DIGIT_FEEDBACK_MAX_AGE_S`: predict again"
    ),
    "duplicate_feedback": Reason(409, "feedback for this prediction is stored already"),
    "not_queued": Reason(
        404, "a review of a row that is unknown, not in the help-label queue, or reviewed already"
    ),
    "rate_limited": Reason(
        429,
        "this client stored `DIGIT_FEEDBACK_PER_CLIENT` rows (or reviews) within "
        "`DIGIT_FEEDBACK_WINDOW_S` (with `Retry-After`)",
    ),
    "feedback_full": Reason(507, "the feedback table holds `DIGIT_FEEDBACK_MAX_ROWS` rows"),
    "feedback_unavailable": Reason(
        503, "the feedback database cannot be reached now (with `Retry-After`)"
    ),
    "feedback_off": Reason(404, "the feedback loop is switched off (`DIGIT_FEEDBACK=0`)"),
    # the service
    "overloaded": Reason(
        503,
        "more than `DIGIT_MAX_QUEUE` images already waiting, or `DIGIT_MAX_WAITING` pictures, "
        "explanations or feedback writes per worker, or a decoder left too little CPU to finish "
        "(with `Retry-After`)",
    ),
}


class Rejected(ValueError):
    """Bad input the caller can fix: a reason from REASONS and a message saying what to change.

    str(exc) is the message; `status` is the reason's HTTP status; `retry_after` (seconds), when
    given, becomes the `Retry-After` header (a 503 without one says RETRY_AFTER_S).
    """

    def __init__(self, reason: str, message: str, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.status = REASONS[reason].status
        self.retry_after = retry_after

    def __reduce__(self) -> tuple[type[Rejected], tuple[str, str, int | None]]:
        # the default would rebuild it from `message` alone and fail (e.g. across processes)
        return (type(self), (self.reason, self.message, self.retry_after))


def usage_hints(max_batch: int) -> dict[str, str]:
    """Per POST path (predictions, explanations, feedback), one line saying how to send a request
    it takes."""
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
        "/feedback": 'Send JSON {"seen": ..., "answered": <digit>, "label": <0-9, or null: not '
        'sure>, "model_version": ..., "prediction_id": ...} with seen, digit, model_version and '
        "prediction_id as a /predict_canvas or /predict_image reply gave them.",
        "/feedback/review": 'Send JSON {"id": <an item id from GET /feedback/queue>, "label": '
        "<0-9>}.",
    }
