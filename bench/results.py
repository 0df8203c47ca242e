"""The data one benchmark run produces, shared by the driver, the target checks and the report."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class LoadResult:
    """What wrk measured for one setting. Latencies in ms, as wrk saw them from the client side."""

    requests: int
    duration_s: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float
    non2xx: int
    statuses: dict[int, int]  # non-2xx status → count
    socket_errors: dict[str, int]  # connect / read / write / timeout
    sample: str = ""  # the start of the first non-2xx body, to say *why* without re-running

    @property
    def rps(self) -> float:
        return self.requests / self.duration_s if self.duration_s else 0.0

    @property
    def socket_error_total(self) -> int:
        return sum(self.socket_errors.values())


@dataclass(frozen=True)
class Setting:
    """One measured configuration: which server, which endpoint, how many connections."""

    server: str  # "ours" or "mlflow"
    endpoint: str
    connections: int
    images_per_request: int = 1

    @property
    def label(self) -> str:
        batch = f", {self.images_per_request} images/request" if self.images_per_request > 1 else ""
        return f"{self.server} {self.endpoint} @ {self.connections} conn{batch}"


@dataclass
class Outcome:
    """A setting and either its measurement or the reason it could not be measured."""

    setting: Setting
    result: LoadResult | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.result is not None and self.error is None

    @property
    def predictions_per_s(self) -> float:
        """Images classified per second: only 2xx replies count."""
        r = self.result
        if r is None or not r.duration_s:
            return 0.0
        return (r.requests - r.non2xx) / r.duration_s * self.setting.images_per_request


@dataclass
class Champion:
    name: str
    version: str
    run_id: str
    bento_tag: str
    test_accuracy: str = "?"


@dataclass
class Run:
    """Everything the report needs about one run."""

    started_utc: str
    duration_s: int
    warmup_s: int
    threads: int
    champion: Champion
    environment: dict[str, str]
    outcomes: list[Outcome] = field(default_factory=list)
    inprocess: dict[str, float] | None = None
    inprocess_error: str | None = None
    score: dict | None = None  # bench/score.py: digit-mlops score on a folder of PNGs
    score_error: str | None = None
    problems: list[str] = field(default_factory=list)
    rollout: dict[str, dict] = field(default_factory=dict)  # bench/rollout.py: "swap", "shadow"
    served_runtime: str = "?"  # what `auto` chose for the measured server (GET /model)
    runtimes: dict[str, list[dict]] = field(default_factory=dict)  # in process, one per round
    footprint: dict[str, dict] = field(default_factory=dict)  # bench/footprint.py, by DIGIT_RUNTIME

    def find(self, server: str, endpoint: str, connections: int | None = None) -> Outcome | None:
        for o in self.outcomes:
            s = o.setting
            wanted = connections is None or s.connections == connections
            if s.server == server and s.endpoint == endpoint and wanted:
                return o
        return None
