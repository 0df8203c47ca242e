"""What the guard lets through to BentoML (service/http/bodies.py, service/inputs/arrays.py):
checked in-process on the same bodies the hostile tests send the real server."""

from __future__ import annotations

import io
import json
import time

import numpy as np
import pytest

from service.http.bodies import FormBody, check_form, endpoint_bodies, read_json
from service.inputs.arrays import json_image, json_images, load_npy
from service.inputs.limits import Limits
from service.refusals import Rejected

LIMITS = Limits()
BODIES = endpoint_bodies(max_batch=64, limits=LIMITS, max_body=1_000_000)
GRID = [[0] * 28 for _ in range(28)]


def refused(fn, *args) -> Rejected:
    with pytest.raises(Rejected) as caught:
        fn(*args)
    return caught.value


def form(*parts: tuple[str, str | None, bytes]) -> tuple[bytes, bytes]:
    """A multipart body of (name, filename or None, content) parts, and its Content-Type."""
    out = b""
    for name, filename, content in parts:
        disposition = f'form-data; name="{name}"' + (
            f'; filename="{filename}"' if filename is not None else ""
        )
        out += f"--b\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + content + b"\r\n"
    return out + b"--b--\r\n", b"multipart/form-data; boundary=b"


def test_a_good_image_body_comes_back_as_its_pixels():
    x = read_json(BODIES["/predict"], json.dumps({"image": GRID, "scale": "0-255"}).encode())
    assert x.shape == (1, 28, 28) and x.dtype == np.uint8


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"{", "malformed_json"),
        (b"[" * 100_000 + b"]" * 100_000, "malformed_json"),  # nested past the recursion limit
        (b'{"image": 1' + b"0" * 5000 + b"}", "malformed_json"),  # an int of 5,000 digits
        (b"\xff\xfe{", "malformed_json"),
        (b"[]", "invalid_field"),
        (b'{"scale": "0-1"}', "missing_field"),
        (json.dumps({"image": GRID, "scale": "0-65535"}).encode(), "bad_scale"),
        (json.dumps({"image": "http://x"}).encode(), "invalid_field"),
        (json.dumps({"image": GRID[:27]}).encode(), "wrong_shape"),
        (json.dumps({"image": [*GRID[:27], [0] * 29]}).encode(), "wrong_shape"),
        (json.dumps({"image": [[True] * 28] * 28}).encode(), "not_numbers"),
        (json.dumps({"image": [["7"] * 28] * 28}).encode(), "not_numbers"),
        (json.dumps({"image": [[None] * 28] * 28}).encode(), "not_numbers"),
        (
            b'{"image": [' + b",".join([b"[" + b",".join([b"NaN"] * 28) + b"]"] * 28) + b"]}",
            "not_finite",
        ),
        (json.dumps({"image": [[256] * 28] * 28}).encode(), "out_of_range"),
    ],
)
def test_a_bad_image_body_is_refused_with_one_reason(body, reason):
    assert refused(read_json, BODIES["/predict"], body).reason == reason


def test_a_million_bad_cells_cost_one_error_and_little_time():
    body = json.dumps({"images": [[["x"] * 28] * 28] * 60}).encode()
    started = time.perf_counter()
    exc = refused(read_json, BODIES["/predict_batch"], body)
    assert exc.reason == "not_numbers" and "images[0]'[0][0]" in exc.message
    assert time.perf_counter() - started < 0.5


def test_a_batch_over_the_limit_is_refused_from_its_length():
    assert refused(json_images, [[]] * 65, "0-255", 64).reason == "batch_too_large"
    assert refused(json_images, [], "0-255", 64).reason == "wrong_shape"
    assert json_images([GRID, GRID], "0-1", 64).shape == (2, 28, 28)
    assert refused(json_image, [[1.5] * 28] * 28, "0-1").reason == "out_of_range"


def test_a_well_formed_form_passes():
    body, ctype = form(("image", "d.png", b"\x89PNG..."), ("note", None, b"hi"))
    check_form(FormBody("image", 10**6), body, ctype)


@pytest.mark.parametrize(
    ("parts", "reason"),
    [
        ([("img", "d.png", b"x")], "missing_field"),
        ([("image", None, b"http://127.0.0.1/x.png")], "not_a_file"),
        ([("image", "d" * 201, b"x")], "bad_filename"),
        ([("image", "a\0b", b"x")], "bad_filename"),
        ([("image", "a.png", b"x"), ("image", "b.png", b"x")], "invalid_field"),
        ([("image", "d.png", b"x"), ("note", None, b"x" * 70_000)], "invalid_field"),
        ([("image", "d.png", b"x")] + [(f"f{i}", None, b"x") for i in range(8)], "bad_multipart"),
    ],
)
def test_a_bad_form_is_refused_with_one_reason(parts, reason):
    body, ctype = form(*parts)
    assert refused(check_form, FormBody("image", 10**6), body, ctype).reason == reason


@pytest.mark.parametrize(
    ("body", "ctype"),
    [
        (
            b"--b\r\nContent-Disposition: form-data; name=image\r\n\r\nabc",
            b"multipart/form-data; boundary=b",
        ),
        (b"abc", b"multipart/form-data"),
        (
            b"--b\r\nContent-Type: text/plain\r\n\r\nabc\r\n--b--\r\n",
            b"multipart/form-data; boundary=b",
        ),
    ],
)
def test_a_malformed_form_is_refused(body, ctype):
    assert refused(check_form, FormBody("image", 10**6), body, ctype).reason == "bad_multipart"


def npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


def test_npy_is_read_from_its_header_first():
    x = np.arange(2 * 28 * 28, dtype=np.uint8).reshape(2, 28, 28)
    assert np.array_equal(load_npy(npy(x), 64), x)
    assert np.array_equal(load_npy(npy(np.asfortranarray(x)), 64), x)
    assert refused(load_npy, npy(x)[:-1], 64).reason == "not_npy"  # a byte short
    assert refused(load_npy, npy(x) + b"\0", 64).reason == "not_npy"  # a byte over
    assert refused(load_npy, npy(x.astype(np.int16)), 64).reason == "wrong_dtype"
    assert load_npy(npy(np.zeros((65, 28, 28), np.uint8)), 64).shape == (
        65,
        28,
        28,
    )  # batch() counts
    header = b"{'descr': '|u1', 'fortran_order': False, 'shape': (99999, 28, 28), }"
    huge = b"\x93NUMPY\x01\x00v\x00" + header
    assert refused(load_npy, huge + b" " * (128 - len(huge) - 1) + b"\n", 64).reason == "not_npy"
