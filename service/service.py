"""The digit classifier service: the registry's champion behind HTTP.

Loads the packaged model once per worker and never talks to MLflow at request time; every reply
says which registry version answered it. All image paths go through `service.preprocess` (the MNIST
procedure), all model calls through one `MicroBatcher`, all refusals through `_refuse` (a 4xx with a
message saying what to fix, counted by reason) or the `Guard` middleware.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import io
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import bentoml
import numpy as np
from fastapi import FastAPI
from pydantic import BaseModel, Field, ValidationError
from starlette.responses import FileResponse, HTMLResponse, JSONResponse
from starlette.staticfiles import StaticFiles

from pipelines.drift import REFERENCE_KEY
from pipelines.params import load as load_params
from service import fastlane, metrics
from service.batcher import MicroBatcher, Overloaded
from service.explain import Explanation
from service.explain import explain as explain_image
from service.forward import CHUNK, set_threads, traced
from service.guard import Guard
from service.preprocess import Limits, Rejected, from_data_url, from_image_bytes, pixels
from service.recycle import Recycle


def _env_int(name: str, default: int) -> int:
    return int(os.environ.get(name) or default)


MODEL_TAG = os.environ.get("DIGIT_MODEL_TAG") or f"{load_params().register.model_name}:latest"
# Measured with `make bench` on 2 cores: 2 workers without the access log serve 1.7-2× the requests
# of 1 worker with it (bench/RESULTS.md).
WORKERS = _env_int("DIGIT_WORKERS", 2)
# TF threads per worker: the cores shared out (2 workers × 1 beat 2 × 2 on 2 cores at 1 and at 64
# connections: idle threads spin); a large batch runs PARALLEL chunks at once to use every core.
TF_THREADS = _env_int("DIGIT_TF_THREADS", max(1, (os.cpu_count() or 2) // WORKERS))
PARALLEL = max(1, (os.cpu_count() or 2) // TF_THREADS)
MAX_BODY_BYTES = _env_int("DIGIT_MAX_BODY_BYTES", 8 * 1024 * 1024)
MAX_QUEUE = _env_int("DIGIT_MAX_QUEUE", 4096)
MODEL_BATCH = _env_int("DIGIT_MODEL_BATCH", CHUNK)
ACCESS_LOG = os.environ.get("DIGIT_ACCESS_LOG", "0") == "1"
# Every N-th response of a worker closes its keep-alive connection, so connections a client opened
# in a burst spread over the workers (service/recycle.py); 0 keeps connections open for ever.
KEEPALIVE_REQUESTS = _env_int("DIGIT_KEEPALIVE_REQUESTS", 100)
# BentoML samples no traces unless configured to (tracing.sample_rate defaults to 0), yet its
# OpenTelemetry middleware took ~14% of a busy worker's time: prediction paths skip it unless asked.
TRACE_PREDICTIONS = os.environ.get("DIGIT_TRACE_PREDICTIONS", "0") == "1"
# Well-formed JSON /predict requests skip BentoML's generic request path (service/fastlane.py).
FAST_LANE = os.environ.get("DIGIT_FAST_LANE", "1") == "1"
LIMITS = Limits(
    max_bytes=_env_int("DIGIT_MAX_UPLOAD_BYTES", 5 * 1024 * 1024),
    max_pixels=_env_int("DIGIT_MAX_PIXELS", 40_000_000),
    max_batch=_env_int("DIGIT_MAX_BATCH", 1024),
)
RETRY_AFTER_S = 1

Scale = Literal["0-255", "0-1"]
Grid = list[list[float]]
SCALE_DOC = "'0-255' (default): pixel values 0-255; '0-1': floats 0-1 (multiplied by 255)"

HINTS = {
    "/predict": 'Send JSON {"image": <28 lists of 28 numbers 0-255, white ink on black>}.',
    "/predict_batch": 'Send JSON {"images": [<28×28 array>, ...]} with at most '
    f"{LIMITS.max_batch} images.",
    "/predict_npy": "Send multipart/form-data with a file field 'array' holding np.save() of "
    f"uint8 (n, 28, 28), n ≤ {LIMITS.max_batch}.",
    "/predict_image": "Send multipart/form-data with a file field 'image' (PNG, JPEG, WebP, GIF, "
    "BMP or TIFF).",
    "/predict_canvas": 'Send JSON {"data_url": "data:image/png;base64,..."} as '
    "canvas.toDataURL() gives it.",
    "/explain": 'Send JSON {"image": <28 lists of 28 numbers 0-255>}, e.g. the "seen" field '
    "of a /predict_image or /predict_canvas reply.",
}


class Prediction(BaseModel):
    digit: int = Field(description="The most likely digit, 0-9")
    confidence: float = Field(description="The probability of that digit")
    probabilities: list[float] = Field(description="Probability of each digit 0-9, in order")
    model_version: str = Field(description="The MLflow registry version that answered")


class SeenPrediction(Prediction):
    seen: list[list[int]] = Field(
        description="The 28×28 pixels (0-255, white ink on black) the model saw after preprocessing"
    )


class BatchItem(BaseModel):
    digit: int
    confidence: float
    probabilities: list[float]


class BatchPrediction(BaseModel):
    predictions: list[BatchItem] = Field(description="One result per image, in order")
    model_version: str


class ModelInfo(BaseModel):
    name: str
    version: str = Field(description="MLflow registry version")
    run_id: str
    bento_tag: str
    test_accuracy: float
    train_wall_time_s: float | None
    train_compute_macs: float | None
    ece: float | None
    git_commit: str
    data_hash: str
    params: dict[str, str] = Field(description="The training params (params.yaml's train.*)")


# GET routes (BentoML APIs are POST-only): a FastAPI app mounted beside them, views on the class.
info_app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)
# The web page (service/static, no build step) at "/" and its files under /static; BentoML's
# Swagger UI moves from "/" to /docs (its assets stay at /static_content, the spec at /docs.json).
STATIC = Path(__file__).parent / "static"
info_app.mount("/static", StaticFiles(directory=STATIC), name="static")


def _swagger_page() -> str:
    """BentoML's own Swagger UI page, minus its Google Tag Manager snippets (works offline)."""
    from _bentoml_impl.server import app as bentoml_app

    html = (Path(bentoml_app.__file__).parent / "main-openapi.html").read_text()
    return re.sub(
        r"\s*<!-- Google Tag Manager.*?End Google Tag Manager[^>]*-->", "", html, flags=re.S
    )


@bentoml.asgi_app(info_app, path="/")
@bentoml.service(
    name="digit_classifier",
    workers=WORKERS,
    resources={"cpu": str(os.cpu_count() or 2)},
    traffic={"timeout": 30},
    tracing={"excluded_urls": [] if TRACE_PREDICTIONS else list(HINTS)},
    logging={"access": {"enabled": ACCESS_LOG}},
)
class DigitClassifier:
    model_ref = bentoml.models.BentoModel(MODEL_TAG)

    def __init__(self) -> None:
        set_threads(TF_THREADS, PARALLEL)
        import keras

        stored = self.model_ref
        self.model = keras.saving.load_model(stored.path_of("model.keras"), compile=False)
        self._infer = traced(self.model, MODEL_BATCH, PARALLEL)
        meta = dict(stored.info.metadata)
        self.version = str(meta["mlflow_version"])
        self.info = ModelInfo(
            name=str(meta.get("registered_model", stored.tag.name)),
            version=self.version,
            run_id=str(meta.get("run_id", "")),
            bento_tag=str(stored.tag),
            test_accuracy=float(meta.get("test_accuracy", "nan")),
            train_wall_time_s=meta.get("train_wall_time_s"),
            train_compute_macs=meta.get("train_compute_macs"),
            ece=meta.get("ece"),
            git_commit=str(meta.get("git_commit", "unknown")),
            data_hash=str(meta.get("data_hash", "unknown")),
            params={str(k): str(v) for k, v in (meta.get("params") or {}).items()},
        )
        metrics.MODEL_INFO.labels(
            self.info.name, self.version, self.info.run_id, self.info.bento_tag
        ).set(1)
        # prepare's drift reference, packaged with the model (service/package.py) when it matched
        reference = meta.get(REFERENCE_KEY)
        if reference:
            metrics.export_reference(reference)
        self._infer(np.zeros((1, 28, 28), np.uint8))  # build the graph before the first request
        self.batcher = MicroBatcher(
            self._infer,
            max_batch=MODEL_BATCH,
            max_queue=MAX_QUEUE,
            on_batch=functools.partial(metrics.observe_batch, model_version=self.version),
        )
        self._version_header = [(b"x-model-version", self.version.encode())]
        self._predict_input = type(self).predict.input_spec  # the model BentoML validates with
        if FAST_LANE:
            fastlane.register("/predict", self._fast_predict)
        # TensorFlow and Keras leave ~400,000 objects that every full collection walked again
        # (~190 ms, a p99 spike): frozen, collections only visit what requests allocate.
        gc.collect()
        gc.freeze()

    async def _classify(
        self, images: np.ndarray, endpoint: str, ctx: bentoml.Context
    ) -> np.ndarray | JSONResponse:
        """Probabilities for uint8 (n, 28, 28), or a 503 when too much is already waiting."""
        try:
            probs = await self.batcher(images, endpoint)
        except Overloaded as exc:
            return self._refuse(endpoint, Rejected("overloaded", str(exc), 503), ctx)
        ctx.response.headers["X-Model-Version"] = self.version
        return probs

    def _refuse(self, endpoint: str, exc: Rejected, ctx: bentoml.Context) -> JSONResponse:
        """The refusal as a JSON body; status and headers go through ctx (BentoML applies them)."""
        metrics.reject(exc.reason, endpoint)
        message = f"{exc.message.rstrip('.')}. {HINTS[f'/{endpoint}']}"
        ctx.response.status_code = exc.status
        ctx.response.headers["X-Reject-Reason"] = exc.reason
        ctx.response.headers["X-Model-Version"] = self.version
        if exc.status == 503:
            ctx.response.headers["Retry-After"] = str(RETRY_AFTER_S)
        return JSONResponse({"error": message, "reason": exc.reason})

    def _one(self, probs: np.ndarray, seen: np.ndarray | None = None) -> Prediction:
        p = probs[0].astype(float)
        digit = int(p.argmax())
        fields = dict(
            digit=digit,
            confidence=float(p[digit]),
            probabilities=[round(v, 6) for v in p.tolist()],
            model_version=self.version,
        )
        if seen is None:
            return Prediction(**fields)
        return SeenPrediction(**fields, seen=seen[0].tolist())

    def _many(self, probs: np.ndarray) -> BatchPrediction:
        digits = probs.argmax(axis=1)
        return BatchPrediction(
            predictions=[
                BatchItem(
                    digit=int(d),
                    confidence=float(p[d]),
                    probabilities=[round(v, 6) for v in p.astype(float).tolist()],
                )
                for d, p in zip(digits, probs, strict=True)
            ],
            model_version=self.version,
        )

    @bentoml.api
    async def predict(
        self,
        image: Annotated[Grid, Field(description="28 rows of 28 pixel values, white ink on black")],
        scale: Annotated[Scale, Field(description=SCALE_DOC)] = "0-255",
        ctx: bentoml.Context = None,
    ) -> Prediction:
        """Classify one 28×28 image, MNIST-style (white ink on black, digit centred)."""
        try:
            x = _single(image, scale)
        except Rejected as exc:
            return self._refuse("predict", exc, ctx)
        probs = await self._classify(x, "predict", ctx)
        return probs if isinstance(probs, JSONResponse) else self._one(probs)

    async def _fast_predict(self, body: bytes) -> tuple[bytes, list] | None:
        """`predict` for the fast lane: the same input model, checks, batcher, metrics and reply
        bytes; None (the API answers instead) for anything it would refuse or answer 503 to."""
        try:
            args = self._predict_input.model_validate_json(body)
            x = _single(args.image, args.scale)
            probs = await self.batcher(x, "predict")
        except (ValidationError, Rejected, Overloaded):
            return None
        return self._one(probs).model_dump_json().encode(), self._version_header

    @bentoml.api
    async def predict_batch(
        self,
        images: Annotated[list[Grid], Field(description="28×28 images, white ink on black")],
        scale: Annotated[Scale, Field(description=SCALE_DOC)] = "0-255",
        ctx: bentoml.Context = None,
    ) -> BatchPrediction:
        """Classify many 28×28 images in one request (at most DIGIT_MAX_BATCH)."""
        return await self._batch(images, scale, "predict_batch", ctx)

    @bentoml.api
    async def predict_npy(
        self,
        array: Annotated[Path, Field(description="np.save() of uint8 (n, 28, 28), 0-255")],
        ctx: bentoml.Context = None,
    ) -> BatchPrediction:
        """The batch endpoint's compact form: a .npy file instead of JSON."""
        try:
            try:
                values = np.load(io.BytesIO(Path(array).read_bytes()), allow_pickle=False)
            except (ValueError, OSError, EOFError) as exc:
                raise Rejected("not_npy", f"'array' is not a readable .npy file ({exc}).") from None
            if values.dtype != np.uint8:
                raise Rejected("wrong_dtype", f"'array' must be uint8, got {values.dtype}.")
        except Rejected as exc:
            return self._refuse("predict_npy", exc, ctx)
        return await self._batch(values, "0-255", "predict_npy", ctx)

    async def _batch(
        self, images: object, scale: str, endpoint: str, ctx: bentoml.Context
    ) -> BatchPrediction | JSONResponse:
        try:
            x = pixels(images, scale)
            if len(x) > LIMITS.max_batch:
                raise Rejected(
                    "batch_too_large",
                    f"{len(x)} images in one request; the limit is {LIMITS.max_batch} "
                    "(DIGIT_MAX_BATCH): split it.",
                    413,
                )
        except Rejected as exc:
            return self._refuse(endpoint, exc, ctx)
        probs = await self._classify(x, endpoint, ctx)
        return probs if isinstance(probs, JSONResponse) else self._many(probs)

    @bentoml.api
    async def predict_image(
        self,
        image: Annotated[Path, Field(description="A picture of one digit, any size and colours")],
        ctx: bentoml.Context = None,
    ) -> SeenPrediction:
        """Classify a picture (scan, screenshot, phone photo): it is made MNIST-like first."""
        return await self._picture(from_image_bytes, Path(image).read_bytes(), "predict_image", ctx)

    @bentoml.api
    async def predict_canvas(
        self,
        data_url: Annotated[
            str, Field(description="canvas.toDataURL(): data:image/png;base64,...")
        ],
        ctx: bentoml.Context = None,
    ) -> SeenPrediction:
        """Classify what a person drew on an HTML canvas."""
        return await self._picture(from_data_url, data_url, "predict_canvas", ctx)

    async def _picture(
        self, decode: Callable[[Any, Limits], np.ndarray], data: Any, endpoint: str, ctx
    ) -> SeenPrediction | JSONResponse:
        """Decode a picture the MNIST way (off the event loop: milliseconds of CPU for a photo),
        classify it, and return what the model saw with the answer."""
        try:
            x = (await asyncio.to_thread(decode, data, LIMITS))[None]
        except Rejected as exc:
            return self._refuse(endpoint, exc, ctx)
        probs = await self._classify(x, endpoint, ctx)
        return probs if isinstance(probs, JSONResponse) else self._one(probs, x)

    @bentoml.api
    async def explain(
        self,
        image: Annotated[Grid, Field(description="28 rows of 28 pixel values, white ink on black")],
        ctx: bentoml.Context = None,
    ) -> Explanation:
        """Why: the first conv layers' feature maps and a Grad-CAM and saliency map of one image."""
        try:
            x = _single(image, "0-255")
        except Rejected as exc:
            return self._refuse("explain", exc, ctx)
        ctx.response.headers["X-Model-Version"] = self.version
        # Eager TF with a gradient tape (tens of ms): off the event loop, beside the batcher.
        return await asyncio.to_thread(explain_image, self.model, x[0])

    @info_app.get("/", include_in_schema=False)
    def page(self) -> FileResponse:
        """The web page: draw or upload a digit, see what the model sees and why."""
        return FileResponse(STATIC / "index.html")

    @info_app.get("/docs", include_in_schema=False)
    def docs(self) -> HTMLResponse:
        """The Swagger UI that BentoML serves at "/" when there is no page."""
        return HTMLResponse(_swagger_page())

    @info_app.get("/model", response_model=ModelInfo)
    def model_info(self) -> ModelInfo:
        """What this worker serves: registry version, run, accuracy, lineage and training params."""
        return self.info


def _single(image: object, scale: str) -> np.ndarray:
    """One 28×28 image as uint8 (1, 28, 28), or Rejected."""
    x = pixels(image, scale)
    if len(x) != 1:
        raise Rejected("wrong_shape", f"expected one 28×28 image, got {len(x)}")
    return x


# Outermost first: the body limit and 4xx rewriting apply to both lanes.
DigitClassifier.add_asgi_middleware(Recycle, every=KEEPALIVE_REQUESTS)
DigitClassifier.add_asgi_middleware(Guard, hints=HINTS, max_body_bytes=MAX_BODY_BYTES)
DigitClassifier.add_asgi_middleware(fastlane.FastLane)
