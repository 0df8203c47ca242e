"""Class 5: ordinary mistakes that were 500s (and fed the critical 5xx alert). Each is now a 4xx
whose reason and message say what to send instead."""

from __future__ import annotations

import io
import zipfile

import numpy as np
import pytest
import requests

from tests.hostile.probe import digit_image, server_errors
from tests.uploads import STYLES, render

pytestmark = pytest.mark.e2e


def png() -> bytes:
    return render(np.array(digit_image(), np.uint8), STYLES[0])


def npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


def npy_with_header(header: str, body: bytes = b"") -> bytes:
    """A .npy v1.0 file with a hand-written header dict (padded as np.save pads it); `header` is
    the text after the dict's opening brace when it starts with "'shape'"."""
    if header.startswith("'shape'"):
        header = "{'descr': '|u1', 'fortran_order': False, " + header
    text = header + " " * (-(len(header) + 11) % 64) + "\n"
    return b"\x93NUMPY\x01\x00" + len(text).to_bytes(2, "little") + text.encode("latin-1") + body


def npz_bytes() -> bytes:
    buf = io.BytesIO()
    np.savez(buf, x=np.zeros((1, 28, 28), np.uint8))
    return buf.getvalue()


def zip_bytes() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("digits.npy", npy_bytes(np.zeros((1, 28, 28), np.uint8)))
    return buf.getvalue()


MULTIPART = {"Content-Type": "multipart/form-data; boundary=xyz"}
CUT_SHORT = b"--xyz\r\nContent-Disposition: form-data; name=image\r\n\r\n"
PICKLED = "{'descr': '|O', 'fortran_order': False, 'shape': (1,), }"
FORM_CASES = {
    # (endpoint, requests kwargs) -> (status, reason, words the message must hold)
    "picture to /predict": (
        "/predict",
        {"files": {"image": ("d.png", png())}},
        (415, "unsupported_media", "/predict_image"),
    ),
    "misspelt file field": (
        "/predict_image",
        {"files": {"img": ("d.png", png())}},
        (400, "missing_field", "'image'"),
    ),
    "file part without a filename": (
        "/predict_image",
        {"files": {"image": (None, png())}},
        (400, "not_a_file", "-F image=@"),
    ),
    "malformed multipart": (
        "/predict_image",
        {"data": CUT_SHORT, "headers": MULTIPART},
        (400, "bad_multipart", "multipart"),
    ),
    "multipart without a boundary": (
        "/predict_image",
        {"data": b"abc", "headers": {"Content-Type": "multipart/form-data"}},
        (400, "bad_multipart", "boundary"),
    ),
    "a very long filename": (
        "/predict_image",
        {"files": {"image": ("d" * 300 + ".png", png())}},
        (400, "bad_filename", "200"),
    ),
    "a NUL in the filename": (
        "/predict_image",
        {"files": {"image": ("d\0.png", png())}},
        (400, "bad_filename", "NUL"),
    ),
    "npz": (
        "/predict_npy",
        {"files": {"array": ("a.npz", npz_bytes())}},
        (400, "not_npy", "np.save"),
    ),
    "zip": ("/predict_npy", {"files": {"array": ("a.zip", zip_bytes())}}, (400, "not_npy", "zip")),
    "header syntax error": (
        "/predict_npy",
        {"files": {"array": ("a.npy", npy_with_header("{'descr': '|u1', 'shape': (1, 28,"))}},
        (400, "not_npy", "readable"),
    ),
    "a bool in the shape": (
        "/predict_npy",
        {
            "files": {
                "array": (
                    "a.npy",
                    npy_with_header(
                        "'shape': (True, 28, 28), }",
                        bytes(784),
                    ),
                )
            }
        },
        (400, "not_npy", "shape"),
    ),
    "a 4,000-digit dimension": (
        "/predict_npy",
        {
            "files": {
                "array": (
                    "a.npy",
                    npy_with_header(
                        "{'descr': '|u1', 'fortran_order': False, 'shape': ("
                        + "9" * 4000
                        + ", 28, 28), }"
                    ),
                )
            }
        },
        (400, "not_npy", ""),
    ),
    "a shape far larger than the body": (
        "/predict_npy",
        {
            "files": {
                "array": (
                    "a.npy",
                    npy_with_header(
                        "'shape': (50, 28, 28), }",
                        bytes(784),
                    ),
                )
            }
        },
        (400, "not_npy", "holds 784 bytes"),
    ),
    "a pickled object array": (
        "/predict_npy",
        {
            "files": {
                "array": (
                    "a.npy",
                    npy_with_header(PICKLED, b"\x80\x04N."),
                )
            }
        },
        (400, "wrong_dtype", "uint8"),
    ),
    "two files in the field": (
        "/predict_image",
        {"files": [("image", ("a.png", png())), ("image", ("b.png", png()))]},
        (400, "invalid_field", "one file"),
    ),
    "an empty file": (
        "/predict_image",
        {"files": {"image": ("d.png", b"")}},
        (400, "empty_body", "empty"),
    ),
    "JSON to a file endpoint": (
        "/predict_npy",
        {"json": {"array": [[0] * 28] * 28}},
        (415, "unsupported_media", "multipart/form-data"),
    ),
    "text/plain JSON": (
        "/predict",
        {"data": b'{"image": []}', "headers": {"Content-Type": "text/plain"}},
        (415, "unsupported_media", "application/json"),
    ),
}


@pytest.mark.parametrize("case", list(FORM_CASES))
def test_an_ordinary_mistake_is_a_4xx_that_says_what_to_fix(server, case):
    endpoint, kwargs, (status, reason, words) = FORM_CASES[case]
    errors = server_errors(server)
    reply = requests.post(f"{server}{endpoint}", timeout=30, **kwargs)
    assert reply.status_code == status, reply.text[:300]
    body = reply.json()
    assert body["reason"] == reason
    assert reply.headers["X-Reject-Reason"] == reason
    assert words in body["error"]
    assert server_errors(server) == errors
