"""A running service from Python: every endpoint, through BentoML's own `SyncHTTPClient`.

BentoML reads the service's API from its `/schema.json` and sends each call as the server expects
it (JSON, or multipart for files); this wrapper only shapes the arguments (arrays become lists or
a .npy file), returns the service's JSON as dicts, and turns a refusal into `Refused` with the
service's status, reason and message. `/model` is not a BentoML API (the page's FastAPI app
answers it), so it is a plain GET through httpx, which BentoML already uses.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import bentoml
import httpx
import numpy as np
from bentoml.exceptions import BentoMLException

DEFAULT_URL = "http://127.0.0.1:3000"
Json = dict[str, Any]


class Refused(ValueError):
    """The service refused the request: its HTTP status, reason label and message."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status, self.reason, self.message = status, reason, message


class Client:
    """A client of one running service (use it in a `with` block, or call `close()`)."""

    def __init__(
        self,
        url: str = DEFAULT_URL,
        *,
        api_key: str | None = None,
        timeout: float = 30.0,
        ready_timeout: float = 0.0,
    ) -> None:
        """`api_key`: the service's DIGIT_API_KEY, when it requires one (sent as a Bearer
        token); `ready_timeout`: seconds to wait for /readyz first (0: the service is up)."""
        self.url = url.rstrip("/")
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._timeout = timeout
        self._bento = bentoml.SyncHTTPClient(
            self.url, token=api_key, timeout=timeout, server_ready_timeout=ready_timeout
        )

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._bento.close()

    def _call(self, endpoint: str, **kwargs: Any) -> Json:
        try:
            return self._bento.call(endpoint, **kwargs)
        except BentoMLException as exc:
            raise _refused(exc) from exc

    def predict(self, image: Any, scale: str = "0-255") -> Json:
        """One 28×28 image (white ink on black): {"digit", "confidence", "probabilities",
        "model_version"}."""
        return self._call("predict", image=_lists(image), scale=scale)

    def predict_batch(self, images: Any, scale: str = "0-255") -> Json:
        """Many 28×28 images as JSON: {"predictions": [...], "model_version"}."""
        return self._call("predict_batch", images=_lists(images), scale=scale)

    def predict_npy(self, images: np.ndarray | str | os.PathLike) -> Json:
        """A uint8 (n, 28, 28) array (sent as a .npy file) or a .npy file's path: like
        `predict_batch`, in a compact body."""
        if isinstance(images, str | os.PathLike):
            return self._call("predict_npy", array=Path(images))
        with tempfile.TemporaryDirectory(prefix="digits-") as folder:
            path = Path(folder) / "images.npy"
            np.save(path, np.ascontiguousarray(images, dtype=np.uint8), allow_pickle=False)
            return self._call("predict_npy", array=path)

    def predict_image(self, path: str | os.PathLike) -> Json:
        """A picture file (PNG, JPEG, WebP, GIF, BMP, TIFF), made MNIST-like by the service:
        the `predict` fields and "seen", the 28×28 it made."""
        return self._call("predict_image", image=Path(path))

    def predict_canvas(self, data_url: str) -> Json:
        """A `data:image/png;base64,...` URL, as `canvas.toDataURL()` gives it."""
        return self._call("predict_canvas", data_url=data_url)

    def explain(self, image: Any) -> Json:
        """Why the model answers what it does for one 28×28 image: feature maps, Grad-CAM,
        saliency."""
        return self._call("explain", image=_lists(image))

    def model(self) -> Json:
        """What the service serves: registry version, run, accuracy, lineage, rollout."""
        return self._get("/model").json()

    def model_card(self) -> str:
        """The served champion's model card (Markdown), as evaluate rendered it."""
        return self._get("/model/card").text

    def _get(self, path: str) -> httpx.Response:
        reply = httpx.get(f"{self.url}{path}", headers=self._headers, timeout=self._timeout)
        if reply.is_error:
            raise _refused_reply(reply.status_code, reply.text)
        return reply


def _lists(images: Any) -> Any:
    return images.tolist() if isinstance(images, np.ndarray) else images


def _refused(exc: BentoMLException) -> Refused:
    return _refused_reply(int(exc.error_code), exc.message)


def _refused_reply(status: int, text: str) -> Refused:
    """The service's {"error", "reason"} body, or the text as it came (from another server)."""
    try:
        body = json.loads(text)
        return Refused(status, str(body["reason"]), str(body["error"]))
    except (ValueError, KeyError, TypeError):
        return Refused(status, "http_error", text[:500])
