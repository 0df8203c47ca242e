"""What each endpoint's request body must be, checked whole before BentoML parses any of it.

BentoML's own parsing is lenient where an attacker wants it to be (any Content-Type is read as
JSON, a text value in a file field is downloaded as a URL, pydantic reports one error per bad cell
and coerces `true` and `"7"` to numbers, a long file name or a malformed form is a 500), so the
`Guard` lets through only bodies that parse here, with every cost bounded by the body's size and
the first problem reported alone. What passes is what the API's schema (service/schemas.py) says.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from python_multipart.multipart import MultipartParser, parse_options_header

from service.feedback import check_feedback, check_review
from service.inputs.arrays import json_image, json_images
from service.inputs.data_urls import check_data_url
from service.inputs.limits import Limits
from service.refusals import Rejected

GRID_BODY_BYTES = 256 * 1024  # one 28×28 image as JSON is 2-20 KB, pretty-printed floats ~40 KB
FEEDBACK_BODY_BYTES = 64 * 1024  # a seen of 784 ints and a few short fields: ~4 KB
MAX_PARTS = 8  # a file and a few text fields
MAX_TEXT_PART = 64 * 1024  # a form's text field (BentoML json-decodes each one)
MAX_FILENAME = 200  # BentoML makes it a temp file's suffix: over ~240 bytes that is a 500


@dataclass(frozen=True)
class JsonBody:
    """A JSON object; `read` takes its fields (and whether the body is free of JSON booleans) to
    the images it holds (None: nothing to hand on ahead of the API) or raises `Rejected`."""

    fields: tuple[str, ...]
    read: Callable[[dict, bool], np.ndarray | None]
    max_bytes: int


@dataclass(frozen=True)
class FormBody:
    """multipart/form-data with one file field `field` (`curl -F field=@file`)."""

    field: str
    max_bytes: int


Body = JsonBody | FormBody


def endpoint_bodies(max_batch: int, limits: Limits, max_body: int) -> dict[str, Body]:
    """Per POST path, what its body must be (the same paths as `usage_hints`)."""
    grid = min(GRID_BODY_BYTES, max_body)
    small = min(FEEDBACK_BODY_BYTES, max_body)

    def canvas(fields: dict, _: bool) -> None:
        check_data_url(fields["data_url"], limits)

    return {
        "/predict": JsonBody(
            ("image",), lambda f, _: json_image(f["image"], f.get("scale", "0-255")), grid
        ),
        "/predict_batch": JsonBody(
            ("images",),
            lambda f, plain: json_images(f["images"], f.get("scale", "0-255"), max_batch, plain),
            max_body,
        ),
        "/predict_canvas": JsonBody(("data_url",), canvas, max_body),
        "/explain": JsonBody(("image",), lambda f, _: json_image(f["image"]), grid),
        "/predict_npy": FormBody("array", max_body),
        "/predict_image": FormBody("image", max_body),
        "/feedback": JsonBody(
            ("seen", "answered", "label", "model_version", "prediction_id"),
            lambda f, _: check_feedback(f),
            small,
        ),
        "/feedback/review": JsonBody(("id", "label"), lambda f, _: check_review(f), small),
    }


def media_type(content_type: bytes | None) -> str:
    return (content_type or b"").split(b";")[0].strip().lower().decode("latin-1")


def read_json(spec: JsonBody, body: bytes) -> np.ndarray | None:
    """The images a JSON body holds, or the first reason it cannot be used."""
    try:
        fields = json.loads(body)
    except RecursionError:
        raise Rejected("malformed_json", "the JSON is nested too deeply to be an image") from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, an int of 4,300+ digits
        raise Rejected("malformed_json", f"the request body is not valid JSON ({exc})") from None
    if not isinstance(fields, dict):
        example = ", ".join(f'"{name}": ...' for name in spec.fields)
        raise Rejected("invalid_field", f"the body must be a JSON object like {{{example}}}")
    for name in spec.fields:
        if name not in fields:
            raise Rejected("missing_field", f"the field '{name}' is missing")
    return spec.read(fields, b"true" not in body and b"false" not in body)


def check_form(spec: FormBody, body: bytes, content_type: bytes) -> None:
    """Refuse a form BentoML would fail on or misuse: malformed, without the file field, the field
    sent as text (BentoML would fetch it as a URL), a bad file name, or too many parts. The file's
    own content (empty, too large, not a picture) is the handler's to judge."""
    options = parse_options_header(content_type)[1]
    boundary = options.get(b"boundary")
    if not boundary:
        raise Rejected("bad_multipart", "multipart/form-data without a boundary parameter")
    parts = _parts(body, boundary)
    names = [_disposition(headers)[0] for headers, _ in parts]
    field = spec.field
    mine = [part for part, name in zip(parts, names, strict=True) if name == field]
    if not mine:
        got = ", ".join(repr(n) for n in names) or "no fields"
        raise Rejected("missing_field", f"the file field '{field}' is missing (got {got})")
    if len(mine) > 1:
        raise Rejected("invalid_field", f"send one file in '{field}', not {len(mine)}")
    headers, _ = mine[0]
    filename = _disposition(headers)[1]
    if filename is None:
        raise Rejected(
            "not_a_file",
            f"'{field}' is a text value, not a file; attach the file itself (curl -F "
            f"{field}=@digit.png): this service does not fetch URLs",
        )
    if len(filename) > MAX_FILENAME or "\0" in filename:
        raise Rejected(
            "bad_filename",
            f"the file name is {len(filename)} characters (or holds a NUL); rename it to at most "
            f"{MAX_FILENAME} characters",
        )
    for (_, part_size), name in zip(parts, names, strict=True):
        if name != field and part_size > MAX_TEXT_PART:
            raise Rejected(
                "invalid_field", f"the field '{name}' is {part_size:,} bytes; only '{field}' is big"
            )


def _parts(body: bytes, boundary: bytes) -> list[tuple[dict[bytes, bytes], int]]:
    """(headers, size) of each part, parsed by python-multipart (Starlette's own parser)."""
    parts: list[tuple[dict[bytes, bytes], int]] = []
    sizes: list[int] = []
    name, value, ended = bytearray(), bytearray(), []

    def begin() -> None:
        if len(parts) == MAX_PARTS:
            raise Rejected("bad_multipart", f"more than {MAX_PARTS} parts in the form")
        parts.append(({}, 0))
        sizes.append(0)

    def header_end() -> None:
        parts[-1][0][bytes(name).lower()] = bytes(value)
        name.clear()
        value.clear()

    def data(chunk: bytes, start: int, end: int) -> None:
        sizes[-1] += end - start

    callbacks = {
        "on_part_begin": begin,
        "on_header_field": lambda d, s, e: name.extend(d[s:e]),
        "on_header_value": lambda d, s, e: value.extend(d[s:e]),
        "on_header_end": header_end,
        "on_part_data": data,
        "on_end": lambda: ended.append(True),
    }
    try:
        parser = MultipartParser(boundary, callbacks)  # type: ignore[arg-type]
        parser.write(body)
        parser.finalize()
    except Rejected:
        raise
    except Exception as exc:  # MultipartParseError and friends
        raise Rejected("bad_multipart", f"the multipart body is malformed ({exc})") from None
    if not ended:
        raise Rejected("bad_multipart", "the multipart body ends before its closing boundary")
    return [(headers, size) for (headers, _), size in zip(parts, sizes, strict=True)]


def _disposition(headers: dict[bytes, bytes]) -> tuple[str, str | None]:
    """(field name, file name or None) of a part; a part without a name is malformed."""
    kind, options = parse_options_header(headers.get(b"content-disposition", b""))
    if kind != b"form-data" or b"name" not in options:
        raise Rejected(
            "bad_multipart", "a part has no 'Content-Disposition: form-data; name=...' header"
        )
    filename = options.get(b"filename")
    return (
        options[b"name"].decode("latin-1"),
        None if filename is None else filename.decode("latin-1"),
    )
