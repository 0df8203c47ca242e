"""The digit classifier service: the registry's champion behind HTTP.

Loads the packaged model and its card once per worker and never talks to MLflow at request time;
every reply says which registry version answered it. Requests become model input in
`service/inputs/`, all model calls go through one `MicroBatcher`, and every refusal is a
`Rejected` from `service/refusals.py` (a 4xx with a message saying what to fix, counted by reason)
answered here or by the ASGI layers in `service/http/`. Knobs: `service/settings.py`.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Annotated, Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import bentoml
import numpy as np
from pydantic import Field
from starlette.responses import FileResponse, HTMLResponse, JSONResponse

from common.card import ModelCard
from common.image import SHAPE
from service import metrics
from service.batcher import MicroBatcher, Overloaded
from service.explain import explain as explain_image
from service.forward import set_threads, traced
from service.http import fastlane
from service.http.bodies import endpoint_bodies
from service.http.exposure import Exposure
from service.http.guard import CHECKED, Guard
from service.http.paths import Restore
from service.http.recycle import Recycle
from service.http.server import install_limits
from service.inputs.arrays import batch, from_npy, one_image
from service.inputs.data_urls import from_data_url
from service.inputs.pictures import from_image_bytes
from service.page import INDEX, page_app, swagger_page
from service.refusals import Rejected, usage_hints
from service.sandbox import Sandbox, Slots
from service.schemas import (
    GRID_DOC,
    SCALE_DOC,
    BatchPrediction,
    Explanation,
    Grid,
    ModelInfo,
    Prediction,
    Scale,
    SeenPrediction,
    batch_prediction,
    prediction,
    seen_prediction,
)
from service.settings import RETRY_AFTER_S, Settings

SETTINGS = Settings.from_env()
HINTS = usage_hints(SETTINGS.max_batch)
LIMITS = SETTINGS.limits
install_limits(SETTINGS)  # uvicorn's protocol, with head and connection limits
Pixels = Annotated[Grid, Field(description=GRID_DOC)]
ScaleField = Annotated[Scale, Field(description=SCALE_DOC)]


@bentoml.asgi_app(page_app, path="/")
@bentoml.service(
    name="digit_classifier",
    workers=SETTINGS.workers,
    resources={"cpu": str(os.cpu_count() or 2)},
    traffic={"timeout": 30},
    tracing={"excluded_urls": [] if SETTINGS.trace_predictions else list(HINTS)},
    logging={"access": {"enabled": SETTINGS.access_log}},
    http={"host": SETTINGS.host},  # without --host: loopback unless DIGIT_HOST exposes it
)
class DigitClassifier:
    model_ref = bentoml.models.BentoModel(SETTINGS.model_tag)

    # --- the API ---------------------------------------------------------------------------------

    @bentoml.api
    async def predict(
        self, image: Pixels, scale: ScaleField = "0-255", ctx: bentoml.Context = None
    ) -> Prediction:
        """Classify one 28×28 image, MNIST-style (white ink on black, digit centred)."""
        return await self._answer("predict", ctx, prediction, one_image, image, scale)

    @bentoml.api
    async def predict_batch(
        self,
        images: Annotated[
            list[Grid],
            Field(
                description=f"1 to {SETTINGS.max_batch} (DIGIT_MAX_BATCH) 28×28 images, white ink "
                "on black",
                min_length=1,
                max_length=SETTINGS.max_batch,
            ),
        ],
        scale: ScaleField = "0-255",
        ctx: bentoml.Context = None,
    ) -> BatchPrediction:
        """Classify many 28×28 images in one request (at most DIGIT_MAX_BATCH)."""
        args = (images, scale, SETTINGS.max_batch)
        return await self._answer("predict_batch", ctx, batch_prediction, batch, *args)

    @bentoml.api
    async def predict_npy(
        self,
        array: Annotated[
            Path,
            Field(
                description="A file: np.save() of uint8 (n, 28, 28), 0-255, n ≤ "
                f"{SETTINGS.max_batch}; at most {SETTINGS.max_body_bytes:,} bytes"
            ),
        ],
        ctx: bentoml.Context = None,
    ) -> BatchPrediction:
        """The batch endpoint's compact form: a .npy file instead of JSON."""
        data = Path(array).read_bytes()
        return await self._answer(
            "predict_npy", ctx, batch_prediction, from_npy, data, SETTINGS.max_batch
        )

    @bentoml.api
    async def predict_image(
        self,
        image: Annotated[
            Path,
            Field(
                description="A file: a picture of one digit (PNG, JPEG, WebP, GIF, BMP, TIFF), at "
                f"most {LIMITS.max_bytes:,} bytes and {LIMITS.max_pixels:,} pixels"
            ),
        ],
        ctx: bentoml.Context = None,
    ) -> SeenPrediction:
        """Classify a picture (scan, screenshot, phone photo): it is made MNIST-like first."""
        data = Path(image).read_bytes()
        return await self._answer(
            "predict_image", ctx, seen_prediction, from_image_bytes, data, LIMITS
        )

    @bentoml.api
    async def predict_canvas(
        self,
        data_url: Annotated[
            str,
            Field(
                description="canvas.toDataURL(): data:image/png;base64,... of at most "
                f"{LIMITS.max_bytes:,} bytes",
                pattern=r"^(?i:data:image/[a-z0-9.+-]+(;[^,]*)?;base64,)",
            ),
        ],
        ctx: bentoml.Context = None,
    ) -> SeenPrediction:
        """Classify what a person drew on an HTML canvas."""
        args = (data_url, LIMITS)
        return await self._answer("predict_canvas", ctx, seen_prediction, from_data_url, *args)

    @bentoml.api
    async def explain(self, image: Pixels, ctx: bentoml.Context = None) -> Explanation:
        """Why: the first conv layers' feature maps and a Grad-CAM and saliency map of one image."""
        try:
            x = one_image(image, "0-255")
            # Eager TF with a gradient tape (tens of ms): off the event loop, beside the batcher,
            # a bounded number at once in threads of its own.
            async with self.explain_slots():
                loop = asyncio.get_running_loop()
                answer = await loop.run_in_executor(
                    self._explainer, explain_image, self.model, x[0]
                )
        except Rejected as exc:
            return self._refuse("explain", exc, ctx)
        except Overloaded as exc:
            return self._refuse("explain", Rejected("overloaded", str(exc)), ctx)
        ctx.response.headers["X-Model-Version"] = self.version
        return answer

    @page_app.get("/", include_in_schema=False)
    def page(self) -> FileResponse:
        """The web page: draw or upload a digit, see what the model sees and why."""
        return FileResponse(INDEX)

    @page_app.get("/docs", include_in_schema=False)
    def docs(self) -> HTMLResponse:
        """The Swagger UI that BentoML serves at "/" when there is no page."""
        return HTMLResponse(swagger_page())

    @page_app.get("/model", response_model=ModelInfo)
    def model_info(self) -> ModelInfo:
        """What this worker serves: registry version, run, accuracy, lineage and training params."""
        return self.info

    # --- one worker's model ----------------------------------------------------------------------

    def __init__(self) -> None:
        set_threads(SETTINGS.threads, SETTINGS.parallel)
        import keras

        stored = self.model_ref
        self.model = keras.saving.load_model(stored.path_of("model.keras"), compile=False)
        card = ModelCard.from_metadata(stored.info.metadata)
        self.version, self.info = card.mlflow_version, ModelInfo.of(card, str(stored.tag))
        metrics.serving(self.info.name, self.version, self.info.run_id, self.info.bento_tag)
        if card.drift_reference is not None:  # prepare's, when it matched the champion's data
            metrics.export_reference(card.drift_reference)
        infer = traced(self.model, SETTINGS.model_batch, SETTINGS.parallel)
        infer(np.zeros((1, *SHAPE), np.uint8))  # build the graph before the first request
        self.batcher = MicroBatcher(
            infer,
            max_batch=SETTINGS.model_batch,
            max_queue=SETTINGS.max_queue,
            on_batch=functools.partial(metrics.observe_batch, model_version=self.version),
        )
        self._version_header = [(b"x-model-version", self.version.encode())]
        memory = SETTINGS.decode_memory_mb * 2**20
        args = (SETTINGS.decoders, SETTINGS.decode_timeout_s, memory, SETTINGS.max_waiting)
        self.sandbox = Sandbox(*args)
        self.explain_slots = Slots(SETTINGS.explainers, SETTINGS.max_waiting, "explanations")
        self._explainer = ThreadPoolExecutor(SETTINGS.explainers, thread_name_prefix="explain")
        if SETTINGS.fast_lane:
            fastlane.register("/predict", functools.partial(self._fast, "predict", prediction))
            # a JSON batch is parsed and checked by the Guard; BentoML parsing it again cost
            # ~20% of /predict_batch's throughput (bench/RESULTS.md)
            fastlane.register(
                "/predict_batch", functools.partial(self._fast, "predict_batch", batch_prediction)
            )
        # TensorFlow and Keras leave ~400,000 objects that every full collection walked again
        # (~190 ms, a p99 spike): frozen, collections only visit what requests allocate.
        gc.collect()
        gc.freeze()

    async def _answer(
        self, endpoint: str, ctx: bentoml.Context, reply: Callable, read: Callable, *args: Any
    ) -> Any:
        """The images read(*args) takes from the request, classified and put in reply(...); or
        the refusal that says what to fix (bad input, or a 503 when too much is waiting)."""
        try:
            # a picture is decoded in a child process, within bounds (service/sandbox.py); the
            # pixels of a JSON body the Guard has already read and checked with the same reader
            checked = ctx.request.scope.get(CHECKED) if ctx.request is not None else None
            if reply is seen_prediction:
                x = (await self.sandbox(read, *args))[None]
            else:
                x = checked if checked is not None else read(*args)
            probs = await self.batcher(x, endpoint)
        except Rejected as exc:
            return self._refuse(endpoint, exc, ctx)
        except Overloaded as exc:
            return self._refuse(endpoint, Rejected("overloaded", str(exc)), ctx)
        ctx.response.headers["X-Model-Version"] = self.version
        return reply(probs, self.version, x)

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

    async def _fast(
        self, endpoint: str, reply: Callable, x: np.ndarray
    ) -> tuple[bytes, list] | None:
        """`endpoint` for the fast lane, given the images the Guard read and checked: the same
        batcher, metrics and reply bytes; None (the API answers instead) for a 503."""
        try:
            probs = await self.batcher(x, endpoint)
        except Overloaded:
            return None
        return reply(probs, self.version).model_dump_json().encode(), self._version_header


# Outermost first: the body limit and 4xx rewriting apply to both lanes.
DigitClassifier.add_asgi_middleware(Recycle, every=SETTINGS.keepalive_requests)
DigitClassifier.add_asgi_middleware(Restore)  # the path paths.Label set aside
DigitClassifier.add_asgi_middleware(Exposure, guarded=[*HINTS, "/metrics"], settings=SETTINGS)
DigitClassifier.add_asgi_middleware(
    Guard,
    hints=HINTS,
    bodies=endpoint_bodies(SETTINGS.max_batch, LIMITS, SETTINGS.max_body_bytes),
    body_timeout_s=SETTINGS.body_timeout_s,
)
DigitClassifier.add_asgi_middleware(fastlane.FastLane)
