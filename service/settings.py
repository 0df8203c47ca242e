"""Every knob of the service, read once from the environment into one typed object.

Each field `name` is the variable `DIGIT_<NAME>` (docs/serving.md has the table, with reasons);
unset or empty means the default. A value of the wrong kind stops the server at start with the
variable's name, instead of a traceback deep in BentoML. The defaults were measured with
`make bench` on 2 cores (bench/RESULTS.md).
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
)

from service.forward import CHUNK
from service.inputs.limits import Limits

CORES = os.cpu_count() or 2
RETRY_AFTER_S = 1  # what a 503 tells the client to wait
Positive = Annotated[int, Field(ge=1)]
Share = Annotated[float, Field(ge=0, le=1)]
Count = Annotated[int, Field(ge=0)]
MIN_KEY_CHARS = 16  # e.g. `openssl rand -hex 32` gives 64
# never echoed, not even in a settings error (a database URL may hold a password)
SECRETS = {"api_key", "feedback_secret", "feedback_db"}


class Settings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", protected_namespaces=())

    # The Bento model to serve. `make` passes `<register.model_name>:latest` from params.yaml;
    # the service itself reads no training config.
    model_tag: str = "mnist-cnn:latest"
    # What computes the answers (service/runtime.py): auto = the fastest runtime evaluate found
    # eligible for the model that runs on this CPU; a named one falls back to slower ones.
    runtime: Literal["auto", "keras", "openvino-fp32", "openvino-bf16", "openvino-int8"] = "auto"
    # 2 workers without the access log serve 1.7-2× the requests of 1 worker with it.
    workers: Positive = 2
    # TF threads inside an op, per worker; unset: the cores shared out over the workers (2 × 1
    # beat 2 × 2 on 2 cores at 1 and at 64 connections: idle threads spin).
    tf_threads: Positive | None = None
    max_body_bytes: Positive = 8 * 1024 * 1024  # refused before it is read
    max_upload_bytes: Positive = Limits.max_bytes  # one picture file
    max_pixels: Positive = Limits.max_pixels  # declared width × height of a picture
    max_batch: Positive = Limits.max_batch  # images in one batch request
    model_batch: Positive = CHUNK  # images per graph call (bigger requests are split)
    max_queue: Count = 4096  # images waiting for the model before a 503
    # Pictures decode in child processes (service/sandbox.py), per worker: this many at once,
    # each killed past the timeout (seconds of its own CPU) or the memory limit. 3 s is ~10× a
    # 12-megapixel phone JPEG's decode here; 1 GiB is twice the worst legal PNG's (~460 MB, 40 Mpx).
    decoders: Positive = 1
    decode_timeout_s: Annotated[float, Field(gt=0)] = 3.0
    decode_memory_mb: Positive = 1024
    # /explain (eager TensorFlow with a gradient tape, tens of ms) runs this many at once per
    # worker, in its own threads; and requests waiting for a decoder or an explanation, each,
    # before a 503.
    explainers: Positive = 1
    max_waiting: Count = 8
    # The whole body must arrive within this long (408 otherwise), under BentoML's 30 s timeout,
    # which would answer a client's stall with a 504.
    body_timeout_s: Annotated[float, Field(gt=0, lt=30)] = 20.0
    access_log: bool = False
    # Every N-th response of a worker closes its keep-alive connection, so connections a client
    # opened in a burst spread over the workers (service/http/recycle.py); 0 keeps them open.
    keepalive_requests: Count = 100
    # BentoML samples no traces unless configured to (tracing.sample_rate defaults to 0), yet its
    # OpenTelemetry middleware took ~14% of a busy worker's time: prediction paths skip it.
    trace_predictions: bool = False
    # Well-formed JSON /predict requests skip BentoML's generic request path (http/fastlane.py).
    fast_lane: bool = True
    # rollout (service/watcher.py, service/shadow.py; docs/rollout.md)
    # How often each worker looks for a newly packaged champion or challenger (0: never; a
    # DIGIT_MODEL_TAG naming one version pins the champion anyway).
    reload_interval_s: Annotated[float, Field(ge=0)] = 2.0
    # Share of requests the challenger answers instead of the champion (the canary), and share
    # of the champion's images it also answers off the reply path (the shadow); both need a
    # challenger packaged beside the champion (`make package`).
    canary_share: Share = 0.0
    shadow_share: Share = 0.0
    # Images waiting for the shadow challenger before more are skipped (counted) instead.
    shadow_backlog: Positive = 1024
    # After SIGTERM, /readyz answers 503 at once and the worker keeps serving this long before it
    # stops accepting, so a load balancer's next health check takes it out first.
    drain_s: Annotated[float, Field(ge=0, le=25)] = 0.0
    # /livez answers 503 once one model call has run this long: stuck, not busy (a batch of 256
    # takes ~50 ms here).
    stuck_after_s: Annotated[float, Field(gt=0)] = 30.0
    # the connection (service/http/server.py)
    # Request line and headers of one request, in bytes: past it 414 or 431 and the connection
    # closed. 16 KiB is Node's and h11's limit; unbounded, a 64 MiB header took 10 s of CPU.
    max_header_bytes: Annotated[int, Field(ge=1024)] = 16 * 1024
    # From the accept (or a request's first byte) until its headers end, else 408 and closed:
    # HAProxy's usual `timeout http-request`; a real client's head is one packet.
    header_timeout_s: Annotated[float, Field(gt=0)] = 10.0
    # Open connections per worker; one more is answered 503 at accept (and kept under the
    # open-file limit). 1000 connections cost a worker 5 MB idle, 12 MB after a request.
    max_connections: Positive = 1000
    # exposure (service/http/exposure.py)
    # The address `bentoml serve` binds without --host (a Bento, the container): loopback.
    # Exposing the service is this explicit choice (e.g. 0.0.0.0), and then needs a key.
    host: str = "127.0.0.1"
    # Host header names served besides localhost, 127.0.0.1 and [::1] (any port); "*": any.
    allowed_hosts: tuple[str, ...] = ()
    # The key the prediction endpoints and /metrics then require (never printed); with none,
    # they answer loopback arrivals only.
    api_key: SecretStr | None = None
    # feedback (service/feedback.py, docs/feedback.md): what people say about the answers
    # `0` turns the loop off: no database is opened, replies carry `prediction_id: null`.
    feedback: bool = True
    # A SQLAlchemy URL; None: `feedback.db` in the working directory (common/feedback_store.py).
    feedback_db: str | None = None
    # Signs prediction ids; None: the secret kept in the database, shared by every worker.
    feedback_secret: SecretStr | None = None
    # A prediction id older than this is refused (410).
    feedback_max_age_s: Annotated[float, Field(gt=0)] = 3600.0
    # Rows stored per client per window, then 429; rows the table may hold, then 507.
    feedback_per_client: Positive = 30
    feedback_window_s: Annotated[float, Field(gt=0)] = 60.0
    feedback_max_rows: Positive = 100_000
    # Answers less confident than this may be sent "not sure" and wait for a helper's label.
    feedback_queue_below: Annotated[float, Field(gt=0, le=1)] = 0.9

    @field_validator("host")
    @classmethod
    def _an_address(cls, value: str) -> str:
        return str(ipaddress.ip_address(value.strip("[]")))

    @field_validator("allowed_hosts", mode="before")
    @classmethod
    def _comma_separated(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(name.strip().lower() for name in value.split(",") if name.strip())
        return value

    @field_validator("api_key", "feedback_secret")
    @classmethod
    def _long_enough(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value().strip()) < MIN_KEY_CHARS:
            raise ValueError(f"a key or secret needs at least {MIN_KEY_CHARS} characters")
        return value

    @field_validator("feedback_db")
    @classmethod
    def _stripped(cls, value: str | None) -> str | None:
        return (value.strip() or None) if value is not None else None

    @property
    def key(self) -> str | None:
        """The API key, or None: no key."""
        return self.api_key.get_secret_value().strip() if self.api_key is not None else None

    @property
    def signing_secret(self) -> bytes | None:
        """DIGIT_FEEDBACK_SECRET as bytes, or None: the database's secret signs instead."""
        if self.feedback_secret is None:
            return None
        return self.feedback_secret.get_secret_value().strip().encode()

    @property
    def threads(self) -> int:
        return self.tf_threads or max(1, CORES // self.workers)

    @property
    def parallel(self) -> int:
        """Graph calls a worker runs at once for one large batch: its share of the cores."""
        return max(1, CORES // self.threads)

    @property
    def limits(self) -> Limits:
        return Limits(self.max_upload_bytes, self.max_pixels, self.max_batch)

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> Settings:
        names = {field: f"DIGIT_{field.upper()}" for field in cls.model_fields}
        values = {field: env[var] for field, var in names.items() if env.get(var, "").strip()}
        try:
            return cls(**values)
        except ValidationError as err:
            problems = "; ".join(_problem(e, names, values) for e in err.errors())
            raise SystemExit(f"service settings: {problems}") from None


def _problem(error: Mapping, names: Mapping[str, str], values: Mapping[str, str]) -> str:
    """One bad value: its variable and what it held (never a secret's)."""
    field = str(error["loc"][0])
    shown = "(hidden)" if field in SECRETS else repr(values[field])
    return f"{names[field]}={shown}: {error['msg']}"
