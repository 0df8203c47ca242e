"""Every knob of the service, read once from the environment into one typed object.

Each field `name` is the variable `DIGIT_<NAME>` (docs/serving.md has the table, with reasons);
unset or empty means the default. A value of the wrong kind stops the server at start with the
variable's name, instead of a traceback deep in BentoML. The defaults were measured with
`make bench` on 2 cores (bench/RESULTS.md).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from service.forward import CHUNK
from service.inputs.limits import Limits

CORES = os.cpu_count() or 2
RETRY_AFTER_S = 1  # what a 503 tells the client to wait
Positive = Annotated[int, Field(ge=1)]
Count = Annotated[int, Field(ge=0)]


class Settings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", protected_namespaces=())

    # The Bento model to serve. `make` passes `<register.model_name>:latest` from params.yaml;
    # the service itself reads no training config.
    model_tag: str = "mnist-cnn:latest"
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
    access_log: bool = False
    # Every N-th response of a worker closes its keep-alive connection, so connections a client
    # opened in a burst spread over the workers (service/http/recycle.py); 0 keeps them open.
    keepalive_requests: Count = 100
    # BentoML samples no traces unless configured to (tracing.sample_rate defaults to 0), yet its
    # OpenTelemetry middleware took ~14% of a busy worker's time: prediction paths skip it.
    trace_predictions: bool = False
    # Well-formed JSON /predict requests skip BentoML's generic request path (http/fastlane.py).
    fast_lane: bool = True

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
            problems = "; ".join(
                f"{names[str(e['loc'][0])]}={values[str(e['loc'][0])]!r}: {e['msg']}"
                for e in err.errors()
            )
            raise SystemExit(f"service settings: {problems}") from None
