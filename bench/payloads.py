"""Request bodies for every endpoint, built from real MNIST digits (the committed test fixture).

Real digits rather than zeros or noise, so the sanity check before each load can ask whether the
answers are right, not just whether they are 200.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
FIXTURE = ROOT / "tests" / "fixtures" / "mnist-sample.npz"
SINGLE_INDEX = 14  # x_test[14] is the 7 in examples/digit-7.json
BOUNDARY = "benchboundary7d1f0c"


def digits(n: int) -> tuple[np.ndarray, np.ndarray]:
    """n real digits, uint8 (n, 28, 28), and their labels; past 1,000 the fixture repeats."""
    with np.load(FIXTURE) as d:
        x = np.concatenate([d["x_test"], d["x_train"]])
        y = np.concatenate([d["y_test"], d["y_train"]])
    reps = -(-n // len(x))
    return np.tile(x, (reps, 1, 1))[:n], np.tile(y, reps)[:n]


def single() -> tuple[np.ndarray, int]:
    """The example 7: the same image a user's first `curl` sends."""
    with np.load(FIXTURE) as d:
        return d["x_test"][SINGLE_INDEX], int(d["y_test"][SINGLE_INDEX])


def predict_json(image: np.ndarray) -> bytes:
    """Body of our `POST /predict`: {"image": 28×28 ints}."""
    return json.dumps({"image": image.tolist()}, separators=(",", ":")).encode()


def mlflow_json(image: np.ndarray) -> bytes:
    """Body of mlflow's `POST /invocations`: the signature is uint8 (-1, 28, 28, 1)."""
    return json.dumps({"inputs": image[None, :, :, None].tolist()}, separators=(",", ":")).encode()


def batch_json(images: np.ndarray) -> bytes:
    """Body of our `POST /predict_batch`: {"images": n×28×28 ints}."""
    return json.dumps({"images": images.tolist()}, separators=(",", ":")).encode()


def npy_multipart(images: np.ndarray) -> tuple[bytes, str]:
    """Body and Content-Type of our `POST /predict_npy`: field `array` holding np.save bytes."""
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(images, dtype=np.uint8), allow_pickle=False)
    head = (
        f"--{BOUNDARY}\r\n"
        'Content-Disposition: form-data; name="array"; filename="digits.npy"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    body = head + buf.getvalue() + f"\r\n--{BOUNDARY}--\r\n".encode()
    return body, f"multipart/form-data; boundary={BOUNDARY}"
