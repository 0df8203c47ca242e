"""The digit classifier service: the registry's champion behind HTTP.

Loads the packaged model and its card once per worker and never talks to MLflow at request time;
every reply says which registry version answered it. A background watcher follows the champion
the store names and swaps a newly packaged one in between two batches (service/watcher.py); a
challenger packaged beside it can answer a share of requests (canary) or run in the shadow.
Requests become model input in `service/inputs/`, all model calls go through one `MicroBatcher`,
and every refusal is a `Rejected` from `service/refusals.py` (a 4xx with a message saying what to
fix, counted by reason) answered here or by the ASGI layers in `service/http/`. Answers to
pictures carry a signed `prediction_id`, and `POST /feedback` stores what a person says about one
(service/feedback.py owns the feedback database). Knobs: `service/settings.py`.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import logging
import os
import random
import signal
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Annotated, Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import bentoml
import numpy as np
from pydantic import Field
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, JSONResponse, Response

from service import feedback, metrics, models
from service.batcher import CHALLENGER, CHAMPION, MicroBatcher, Overloaded
from service.explain import explain as explain_image
from service.http import fastlane
from service.http.asgi import error_response
from service.http.bodies import endpoint_bodies
from service.http.exposure import Exposure
from service.http.guard import CHECKED, Guard
from service.http.paths import Restore
from service.http.recycle import Recycle
from service.http.server import install_limits
from service.inputs.arrays import batch, from_npy, one_image
from service.inputs.data_urls import from_data_url
from service.inputs.pictures import from_image_bytes
from service.models import Loaded, LoadFailed
from service.page import INDEX, page_app, swagger_page
from service.refusals import Rejected, usage_hints
from service.sandbox import Sandbox, Slots
from service.schemas import (
    GRID_DOC,
    MODEL_CARD_PATH,
    PREDICTION_ID,
    SCALE_DOC,
    BatchPrediction,
    Digit,
    Explanation,
    FeedbackInfo,
    FeedbackQueue,
    FeedbackStored,
    Grid,
    ModelInfo,
    Prediction,
    QueueItem,
    Reviewed,
    Rollout,
    Scale,
    SeenGrid,
    SeenPrediction,
    Version,
    batch_prediction,
    prediction,
    seen_prediction,
)
from service.settings import RETRY_AFTER_S, Settings
from service.shadow import Shadow
from service.watcher import Tags, Watcher

log = logging.getLogger(__name__)
SETTINGS = Settings.from_env()
# `<name>:latest` (what `make serve` passes) follows the store; a tag naming a version pins it.
FOLLOWS = SETTINGS.model_tag.partition(":")[2] in ("", "latest")
WANTS_CHALLENGER = SETTINGS.canary_share > 0 or SETTINGS.shadow_share > 0
HINTS = usage_hints(SETTINGS.max_batch)
LIMITS = SETTINGS.limits
install_limits(SETTINGS)  # uvicorn's protocol, with head and connection limits
Pixels = Annotated[Grid, Field(description=GRID_DOC)]
ScaleField = Annotated[Scale, Field(description=SCALE_DOC)]
QUEUE_HINT = "GET /feedback/queue?limit=N (1-50) lists what helpers may label."
OPEN_WAIT_S = 10  # how long a starting worker waits for the feedback database before serving


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
                served = self.champion
                # with OpenVINO serving, TensorFlow and Keras load at the first /explain
                answer = await loop.run_in_executor(
                    self._explainer, lambda: explain_image(served.keras(), x[0])
                )
        except Rejected as exc:
            return self._refuse("explain", exc, ctx)
        except Overloaded as exc:
            return self._refuse("explain", Rejected("overloaded", str(exc)), ctx)
        ctx.response.headers["X-Model-Version"] = served.version
        return answer

    @bentoml.api
    async def feedback(
        self,
        seen: Annotated[SeenGrid, Field(description="The reply's `seen`, unchanged")],
        answered: Annotated[Digit, Field(description="The reply's `digit`")],
        label: Annotated[
            Digit | None,
            Field(description="The digit it really is; null: not sure, ask a helper"),
        ],
        model_version: Annotated[Version, Field(description="The reply's `model_version`")],
        prediction_id: Annotated[
            str, Field(description="The reply's `prediction_id`", pattern=PREDICTION_ID)
        ],
        ctx: bentoml.Context = None,
    ) -> FeedbackStored:
        """Say whether an answer of /predict_canvas or /predict_image was right: stores the 28×28
        it saw and your label in the feedback database (HTTP 201)."""
        try:
            loop = self._feedback_on()
            x = np.asarray(seen, np.uint8)
            args = (x, answered, label, model_version, prediction_id, _peer(ctx.request))
            stored = await loop.add(*args)
        except Rejected as exc:
            return self._refuse("feedback", exc, ctx)
        ctx.response.status_code = 201
        return FeedbackStored(**stored)

    @bentoml.api(route="/feedback/review")
    async def feedback_review(
        self,
        id: Annotated[int, Field(ge=1, description="A GET /feedback/queue item's id")],
        label: Annotated[Digit, Field(description="The digit it is")],
        ctx: bentoml.Context = None,
    ) -> Reviewed:
        """A helper's label for a drawing in the help-label queue (first label wins)."""
        try:
            await self._feedback_on().review(id, label, _peer(ctx.request))
        except Rejected as exc:
            return self._refuse("feedback/review", exc, ctx)
        return Reviewed(reviewed=id, label=label)

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
        """What this worker serves: registry version, run, accuracy and per-digit recall, the
        architecture, lineage and training params, and the rollout (challenger, canary and shadow
        shares)."""
        challenger = self.challenger
        rollout = Rollout(
            follows_store=FOLLOWS and SETTINGS.reload_interval_s > 0,
            reload_interval_s=SETTINGS.reload_interval_s,
            challenger_version=challenger.version if challenger else None,
            challenger_bento_tag=challenger.tag if challenger else None,
            canary_share=SETTINGS.canary_share,
            shadow_share=SETTINGS.shadow_share,
        )
        return self.champion.info.model_copy(update={"rollout": rollout})

    @page_app.get("/feedback", response_model=FeedbackInfo)
    def feedback_info(self) -> FeedbackInfo:
        """Whether this service takes feedback, and for which answers "not sure" is allowed (the
        page reads it at load)."""
        if self.feedback_loop is None:
            return FeedbackInfo(
                enabled=False,
                queue_below=SETTINGS.feedback_queue_below,
                max_age_s=SETTINGS.feedback_max_age_s,
            )
        return FeedbackInfo(**self.feedback_loop.info())

    @page_app.get("/feedback/queue", response_model=FeedbackQueue)
    async def feedback_queue(self, request: Request) -> Response:
        """Stored drawings the model was unsure of, waiting for a helper's label (guarded like
        predictions: they are people's drawings)."""
        try:
            limit = feedback.queue_limit(request.query_params.get("limit"))
            items = await self._feedback_on().queue(limit)
        except Rejected as exc:
            return _page_refusal("feedback/queue", exc)
        return JSONResponse(
            FeedbackQueue(
                below=SETTINGS.feedback_queue_below,
                items=[
                    QueueItem(
                        id=q.id,
                        seen=q.seen.tolist(),
                        answered=q.answered,
                        confidence=q.confidence,
                        label=q.label,
                        model_version=q.model_version,
                    )
                    for q in items
                ],
            ).model_dump()
        )

    @page_app.get(MODEL_CARD_PATH, response_class=Response)
    def model_card(self) -> Response:
        """The champion's Markdown model card, as evaluate rendered it from its metrics."""
        served = self.champion
        if not served.card.markdown:
            return JSONResponse(
                {"error": f"{served.tag} has no model card: its run was evaluated without one"},
                status_code=404,
            )
        path = Path(bentoml.models.get(served.tag).path) / served.card.markdown
        return Response(path.read_bytes(), media_type="text/markdown; charset=utf-8")

    # --- one worker's model ----------------------------------------------------------------------

    def __init__(self) -> None:
        # the feedback database opens in its own thread while the model loads
        self.feedback_loop = feedback.Loop(SETTINGS) if SETTINGS.feedback else None
        self.draining = False
        self.watcher: Watcher | None = None
        # A champion that fails to load or to answer its probe stops the worker, saying why.
        self.champion: Loaded = self._load(str(self.model_ref.tag))
        self.challenger: Loaded | None = None
        share, backlog = SETTINGS.shadow_share, SETTINGS.shadow_backlog
        self.shadow = Shadow(share, backlog, lambda: self.challenger)
        self.batcher = MicroBatcher(
            self.champion,
            max_batch=SETTINGS.model_batch,
            max_queue=SETTINGS.max_queue,
            on_batch=metrics.observe_batch,
            after_batch=self.shadow,
        )
        self._announce(CHAMPION, self.champion)
        if WANTS_CHALLENGER:  # before the first request; later ones come through the watcher
            self._first_challenger()
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
        if self.feedback_loop is not None:
            self.feedback_loop.wait_open(OPEN_WAIT_S)
        # TensorFlow and Keras leave ~400,000 objects that every full collection walked again
        # (~190 ms, a p99 spike): frozen, collections only visit what requests allocate.
        gc.collect()
        gc.freeze()

    @staticmethod
    def _load(tag: str) -> Loaded:
        args = (SETTINGS.model_batch, SETTINGS.parallel, SETTINGS.threads, SETTINGS.runtime)
        return models.load(tag, *args)

    def _announce(self, role: str, served: Loaded) -> None:
        metrics.serving(served.info, role)
        metrics.model_accuracy(served.info)
        if served.card.drift_reference is not None:  # prepare's, when it matched the data
            metrics.export_reference(served.card.drift_reference, served.version)

    def _first_challenger(self) -> None:
        tag = self._wanted()[CHALLENGER]
        if tag is None:
            return
        try:
            self.challenger = self._load(tag)
        except LoadFailed as exc:
            log.error("challenger %s not served: %s", tag, exc)
            metrics.reload(CHALLENGER, f"{exc.stage}_failed")
            return
        self.batcher.install(CHALLENGER, self.challenger)
        self._announce(CHALLENGER, self.challenger)

    def _wanted(self) -> Tags:
        """What the store names now: the champion, and a challenger other than it."""
        champion = models.resolve(SETTINGS.model_tag) if FOLLOWS else self.champion.tag
        challenger = models.challenger_of(champion) if WANTS_CHALLENGER else None
        return {CHAMPION: champion, CHALLENGER: None if challenger == champion else challenger}

    def _serving(self) -> Tags:
        return {
            CHAMPION: self.champion.tag,
            CHALLENGER: self.challenger.tag if self.challenger else None,
        }

    async def _install(self, role: str, new: Loaded | None) -> None:
        """Put `new` in service for `role` (on the event loop, so between two batches)."""
        old = self.batcher.install(role, new)
        if role == CHAMPION:
            self.champion = new
        else:
            self.challenger = new
        if old is not None:
            metrics.serving(old.info, role, on=False)
        if new is not None:
            self._announce(role, new)

    @bentoml.on_startup
    async def _follow(self) -> None:
        """Start the watcher, and make SIGTERM turn /readyz to 503 first (draining)."""
        loop = asyncio.get_running_loop()
        self._drain_on_signal(loop)
        if SETTINGS.reload_interval_s > 0 and (FOLLOWS or WANTS_CHALLENGER):
            self.watcher = Watcher(
                wanted=self._wanted,
                serving=self._serving,
                load=self._load,
                install=self._install,
                loop=loop,
                interval_s=SETTINGS.reload_interval_s,
            )
            self.watcher.start()

    @bentoml.on_shutdown
    def _stop_following(self) -> None:
        if self.watcher is not None:
            self.watcher.stop()
        self.shadow.close()
        if self.feedback_loop is not None:
            self.feedback_loop.close()

    def _drain_on_signal(self, loop: asyncio.AbstractEventLoop) -> None:
        """Wrap uvicorn's SIGTERM/SIGINT handler: say "not ready" at once, then (after
        DIGIT_DRAIN_S) let uvicorn stop accepting and finish what is in flight."""

        def draining(signum: int, frame, previous=None) -> None:
            self.draining = True
            if SETTINGS.drain_s > 0:
                later = (SETTINGS.drain_s, previous, signum, frame)
                loop.call_soon_threadsafe(loop.call_later, *later)
            else:
                previous(signum, frame)

        for sig in (signal.SIGTERM, signal.SIGINT):
            previous = signal.getsignal(sig)
            if callable(previous):
                signal.signal(sig, functools.partial(draining, previous=previous))

    def __is_ready__(self) -> bool:
        """/readyz: the champion is loaded, warmed up and checked (done in __init__, before any
        request), and this worker is not shutting down."""
        return not self.draining

    def __is_alive__(self) -> bool:
        """/livez: false only when one model call has run past DIGIT_STUCK_AFTER_S; a busy
        worker answers this from its event loop while the model thread works."""
        return self.batcher.busy_for() < SETTINGS.stuck_after_s

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
            answer = await self.batcher(x, endpoint, self._route())
        except Rejected as exc:
            return self._refuse(endpoint, exc, ctx)
        except Overloaded as exc:
            return self._refuse(endpoint, Rejected("overloaded", str(exc)), ctx)
        ctx.response.headers["X-Model-Version"] = answer.model.version
        result = reply(answer.outputs, answer.model.version, x)
        if reply is seen_prediction and self.feedback_loop is not None:
            result.prediction_id = self.feedback_loop.sign(
                x[0], result.digit, result.model_version, result.confidence
            )
        return result

    def _feedback_on(self) -> feedback.Loop:
        if self.feedback_loop is None:  # (the FeedbackOff layer answers these paths first)
            raise Rejected("feedback_off", "this service takes no feedback (DIGIT_FEEDBACK=0)")
        return self.feedback_loop

    def _route(self) -> str:
        """The canary's share of requests goes to the challenger, when one is served."""
        share = SETTINGS.canary_share
        if share > 0 and self.challenger is not None and random.random() < share:
            return CHALLENGER
        return CHAMPION

    def _refuse(self, endpoint: str, exc: Rejected, ctx: bentoml.Context) -> JSONResponse:
        """The refusal as a JSON body; status and headers go through ctx (BentoML applies them)."""
        metrics.reject(exc.reason, endpoint)
        message = f"{exc.message.rstrip('.')}. {HINTS[f'/{endpoint}']}"
        ctx.response.status_code = exc.status
        ctx.response.headers["X-Reject-Reason"] = exc.reason
        ctx.response.headers["X-Model-Version"] = self.champion.version
        if exc.retry_after is not None or exc.status == 503:
            ctx.response.headers["Retry-After"] = str(exc.retry_after or RETRY_AFTER_S)
        return JSONResponse({"error": message, "reason": exc.reason})

    async def _fast(
        self, endpoint: str, reply: Callable, x: np.ndarray
    ) -> tuple[bytes, list] | None:
        """`endpoint` for the fast lane, given the images the Guard read and checked: the same
        batcher, metrics and reply bytes; None (the API answers instead) for a 503."""
        try:
            answer = await self.batcher(x, endpoint, self._route())
        except Overloaded:
            return None
        served = answer.model
        return reply(answer.outputs, served.version).model_dump_json().encode(), served.header


def _peer(request: Request | None) -> str:
    """The address the request came from (behind a proxy: the proxy's)."""
    client = request.client if request is not None else None
    return client.host if client is not None else "unknown"


def _page_refusal(endpoint: str, exc: Rejected) -> Response:
    """A refusal of a GET route, in the API's shape, counted like the others."""
    metrics.reject(exc.reason, endpoint)
    headers, body = error_response(exc, QUEUE_HINT)
    response = Response(body, status_code=exc.status)
    response.headers.update({k.decode(): v.decode() for k, v in headers})
    if exc.retry_after is not None or exc.status == 503:
        response.headers["Retry-After"] = str(exc.retry_after or RETRY_AFTER_S)
    return response


# Outermost first: the body limit and 4xx rewriting apply to both lanes.
DigitClassifier.add_asgi_middleware(Recycle, every=SETTINGS.keepalive_requests)
DigitClassifier.add_asgi_middleware(Restore)  # the path paths.Label set aside
DigitClassifier.add_asgi_middleware(
    Exposure,
    guarded=[*HINTS, "/metrics", *feedback.GUARDED],
    settings=SETTINGS,
    open_reads=feedback.OPEN_READS,
)
if not SETTINGS.feedback:
    DigitClassifier.add_asgi_middleware(feedback.FeedbackOff)
DigitClassifier.add_asgi_middleware(
    Guard,
    hints=HINTS,
    bodies=endpoint_bodies(SETTINGS.max_batch, LIMITS, SETTINGS.max_body_bytes),
    body_timeout_s=SETTINGS.body_timeout_s,
)
DigitClassifier.add_asgi_middleware(fastlane.FastLane)
