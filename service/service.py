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
from pathlib import Path
from typing import Annotated, Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import bentoml
import numpy as np
from pydantic import Field, ValidationError
from starlette.responses import FileResponse, HTMLResponse, JSONResponse

from common.card import ModelCard
from common.image import SHAPE
from service import metrics
from service.batcher import MicroBatcher, Overloaded
from service.explain import explain as explain_image
from service.forward import set_threads, traced
from service.http import fastlane
from service.http.guard import Guard
from service.http.recycle import Recycle
from service.inputs.arrays import batch, from_npy, one_image
from service.inputs.data_urls import from_data_url
from service.inputs.pictures import from_image_bytes
from service.page import INDEX, page_app, swagger_page
from service.refusals import Rejected, usage_hints
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
        images: Annotated[list[Grid], Field(description="28×28 images, white ink on black")],
        scale: ScaleField = "0-255",
        ctx: bentoml.Context = None,
    ) -> BatchPrediction:
        """Classify many 28×28 images in one request (at most DIGIT_MAX_BATCH)."""
        args = (images, scale, SETTINGS.max_batch)
        return await self._answer("predict_batch", ctx, batch_prediction, batch, *args)

    @bentoml.api
    async def predict_npy(
        self,
        array: Annotated[Path, Field(description="np.save() of uint8 (n, 28, 28), 0-255")],
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
        image: Annotated[Path, Field(description="A picture of one digit, any size and colours")],
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
            str, Field(description="canvas.toDataURL(): data:image/png;base64,...")
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
        except Rejected as exc:
            return self._refuse("explain", exc, ctx)
        ctx.response.headers["X-Model-Version"] = self.version
        # Eager TF with a gradient tape (tens of ms): off the event loop, beside the batcher.
        return await asyncio.to_thread(explain_image, self.model, x[0])

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
        self._predict_input = type(self).predict.input_spec  # the model BentoML validates with
        if SETTINGS.fast_lane:
            fastlane.register("/predict", self._fast_predict)
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
            if reply is seen_prediction:  # a picture: milliseconds of CPU, off the event loop
                x = (await asyncio.to_thread(read, *args))[None]
            else:
                x = read(*args)
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

    async def _fast_predict(self, body: bytes) -> tuple[bytes, list] | None:
        """`predict` for the fast lane: the same input model, checks, batcher, metrics and reply
        bytes; None (the API answers instead) for anything it would refuse or answer 503 to."""
        try:
            args = self._predict_input.model_validate_json(body)
            probs = await self.batcher(one_image(args.image, args.scale), "predict")
        except (ValidationError, Rejected, Overloaded):
            return None
        return prediction(probs, self.version).model_dump_json().encode(), self._version_header


# Outermost first: the body limit and 4xx rewriting apply to both lanes.
DigitClassifier.add_asgi_middleware(Recycle, every=SETTINGS.keepalive_requests)
DigitClassifier.add_asgi_middleware(Guard, hints=HINTS, max_body_bytes=SETTINGS.max_body_bytes)
DigitClassifier.add_asgi_middleware(fastlane.FastLane)
