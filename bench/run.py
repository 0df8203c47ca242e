"""`make bench`: measure our service and `mlflow models serve` on the same champion, then report.

One run: resolve the registry's champion once, serve exactly that version from both servers (one
server at a time, so they never share the CPU; ours on the runtime `auto` picks), load each
setting with wrk, start the service once per runtime for its time to ready and memory per worker
(bench/footprint.py), time the bare model in process on every runtime, and rewrite
bench/RESULTS.md. Exits non-zero only when the harness itself could not do its
job (a server that never starts, wrk failing); a missed target is a result, not an error.

Environment: BENCH_DURATION (s per setting, 10), BENCH_WARMUP (s, 2), BENCH_CONNECTIONS (1,16,64),
BENCH_THREADS (wrk threads, 2), BENCH_BATCH (images per batch request, 1000),
BENCH_BATCH_CONNECTIONS (2), BENCH_TIMEOUT (wrk request timeout s, 10), BENCH_START_TIMEOUT (s per
server start, 120), BENCH_MLFLOW (1; 0 skips `mlflow models serve`, for quick A/B runs of our
service), BENCH_ROLLOUT (1; 0 skips the hot swap and shadow measurements, bench/rollout.py),
BENCH_SCORE (10000: PNGs `digit-mlops score` reads in process, bench/score.py; 0 skips it),
BENCH_INPROCESS_ROUNDS (3: in-process runs per runtime, interleaved), BENCH_FOOTPRINT (1; 0 skips
the time-to-ready and memory starts), BENCH_OUTPUT (bench/RESULTS.md). Our server inherits the
caller's DIGIT_* variables (e.g. `DIGIT_FAST_LANE=0 BENCH_MLFLOW=0 BENCH_OUTPUT=/tmp/ab.md make
bench`); the report lists them.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import requests

from bench import footprint, load, machine, payloads, report, rollout, servers
from bench.results import Champion, Outcome, Run, Setting
from bench.targets import judge

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
Check = Callable[[bytes], str | None]  # reply body → None if sensible, else what is wrong


@dataclass(frozen=True)
class Config:
    duration_s: int
    warmup_s: int
    connections: tuple[int, ...]
    threads: int
    batch: int
    batch_connections: int
    timeout_s: int
    start_timeout_s: int
    mlflow: bool
    rollout: bool
    score_pictures: int
    inprocess_rounds: int
    footprint: bool
    output: Path

    @classmethod
    def from_env(cls) -> Config:
        def num(name: str, default: int) -> int:
            raw = os.environ.get(name, "").strip()
            value = int(raw) if raw else default
            if value < 0 or (value == 0 and name not in ("BENCH_WARMUP", "BENCH_SCORE")):
                raise SystemExit(f"bench: {name}={raw} must be a positive whole number")
            return value

        conns = os.environ.get("BENCH_CONNECTIONS", "").strip() or "1,16,64"
        return cls(
            duration_s=num("BENCH_DURATION", 10),
            warmup_s=num("BENCH_WARMUP", 2),
            connections=tuple(int(c) for c in conns.split(",")),
            threads=num("BENCH_THREADS", 2),
            batch=num("BENCH_BATCH", 1000),
            batch_connections=num("BENCH_BATCH_CONNECTIONS", 2),
            timeout_s=num("BENCH_TIMEOUT", 10),
            start_timeout_s=num("BENCH_START_TIMEOUT", 120),
            mlflow=os.environ.get("BENCH_MLFLOW", "1").strip() != "0",
            rollout=os.environ.get("BENCH_ROLLOUT", "1").strip() != "0",
            score_pictures=num("BENCH_SCORE", 10_000),
            inprocess_rounds=num("BENCH_INPROCESS_ROUNDS", 3),
            footprint=os.environ.get("BENCH_FOOTPRINT", "1").strip() != "0",
            output=Path(os.environ.get("BENCH_OUTPUT") or ROOT / "bench" / "RESULTS.md"),
        )


def resolve_champion() -> Champion:
    """The registry's champion, once: both servers then serve this version even if the alias moves
    mid-run (a training job may register a new one)."""
    import bentoml
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from pipelines.package import bento_tag
    from pipelines.params import load as load_params
    from pipelines.paths import tracking_uri
    from pipelines.redact import redact

    name = load_params().register.model_name
    try:
        mv = MlflowClient(tracking_uri()).get_model_version_by_alias(name, "champion")
    except MlflowException:
        raise SystemExit(
            f"bench: no {name}@champion in {redact(tracking_uri())}: run `make repro`"
        ) from None
    tag = bento_tag(name, mv.version, mv.run_id)
    try:
        bentoml.models.get(tag)
    except bentoml.exceptions.NotFound:
        raise SystemExit(f"bench: {tag} is not in the BentoML store: run `make package`") from None
    return Champion(name, str(mv.version), mv.run_id, tag, mv.tags.get("test_accuracy", "?"))


def _json(body: bytes) -> dict | list:
    return json.loads(body)


def check_ours_single(label: int, version: str) -> Check:
    def check(body: bytes) -> str | None:
        reply = _json(body)
        if not isinstance(reply, dict) or "digit" not in reply:
            return f"no 'digit' in {body[:200]!r}"
        if reply["digit"] != label:
            return f"predicted {reply['digit']} for a {label}"
        if str(reply.get("model_version")) != version:
            return f"served model_version {reply.get('model_version')}, champion is {version}"
        return None

    return check


def check_mlflow(label: int) -> Check:
    def check(body: bytes) -> str | None:
        preds = _json(body)
        preds = preds.get("predictions", preds) if isinstance(preds, dict) else preds
        try:
            probs = [float(p) for p in preds[0]]
        except (TypeError, ValueError, IndexError, KeyError):
            return f"unexpected reply {body[:200]!r}"
        digit = max(range(len(probs)), key=probs.__getitem__)
        return None if digit == label else f"predicted {digit} for a {label}"

    return check


def check_batch(labels: list[int], version: str) -> Check:
    def check(body: bytes) -> str | None:
        reply = _json(body)
        preds = reply.get("predictions") if isinstance(reply, dict) else None
        if not isinstance(preds, list) or len(preds) != len(labels):
            return f"expected 'predictions' with {len(labels)} items, got {body[:200]!r}"
        digits = [p.get("digit") if isinstance(p, dict) else p for p in preds]
        right = sum(d == y for d, y in zip(digits, labels, strict=True)) / len(labels)
        if right < 0.9:
            return f"only {right:.1%} of the batch right (first items: {preds[:2]!r})"
        if str(reply.get("model_version")) != version:
            return f"served model_version {reply.get('model_version')}, champion is {version}"
        return None

    return check


def drain(server: subprocess.Popen[bytes]) -> None:
    waited = servers.wait_idle(server)
    if waited > 1:
        print(f"    (waited {waited:.1f} s for the server to finish its backlog)", flush=True)


def measure(
    setting: Setting,
    target: load.Target,
    check: Check,
    cfg: Config,
    lua_dir: Path,
    server: subprocess.Popen[bytes],
) -> Outcome:
    """Probe once (a clear failure beats a count of errors), warm up, then measure; after each
    wrk run, wait for the server to finish the requests wrk left in flight."""
    print(f"==> {setting.label}: {cfg.warmup_s} s warm-up + {cfg.duration_s} s", flush=True)
    t0 = time.perf_counter()
    status, body = load.probe(target)
    probe_ms = (time.perf_counter() - t0) * 1e3
    if status != 200:
        error = f"HTTP {status}: {body[:300].decode(errors='replace')}"
        print(f"    FAILED {error}", flush=True)
        return Outcome(setting, error=error)
    try:
        problem = check(body)
    except ValueError as err:  # not JSON
        problem = f"unreadable reply ({err}): {body[:200]!r}"
    if problem:
        print(f"    FAILED sanity check: {problem}", flush=True)
        return Outcome(setting, error=f"bad reply: {problem}")
    print(f"    probe: HTTP 200 in {probe_ms:.0f} ms, answers look right", flush=True)
    lua = load.script(target, lua_dir / f"{abs(hash(setting))}.lua")
    run = {"connections": setting.connections, "threads": cfg.threads, "timeout_s": cfg.timeout_s}
    if cfg.warmup_s:
        load.run_wrk(target, lua, duration_s=cfg.warmup_s, **run)
        drain(server)
    result = load.run_wrk(target, lua, duration_s=cfg.duration_s, **run)
    drain(server)
    outcome = Outcome(setting, result)
    if result.requests == 0:  # wrk's latencies only cover completed requests: none means no data
        outcome.error = f"no request completed in {cfg.duration_s} s (timeout {cfg.timeout_s} s)"
    print(
        f"    {result.rps:,.1f} req/s, {outcome.predictions_per_s:,.1f} predictions/s, "
        f"p50 {result.p50_ms:.2f} / p99 {result.p99_ms:.2f} ms, {result.non2xx} non-2xx, "
        f"{result.socket_error_total} socket errors",
        flush=True,
    )
    return outcome


def server_env(**extra: str) -> dict[str, str]:
    """The caller's environment with the venv first on PATH: `mlflow models serve` execs a bare
    `uvicorn`, which is only found there when the bench runs outside `make`."""
    path = os.pathsep.join([str(BIN), os.environ.get("PATH", "")])
    return {**os.environ, "PATH": path, **extra}


def private_home(tmp: Path, champ: Champion) -> Path:
    """A BentoML home holding a copy of the champion alone. Every `bentoml serve` empties its
    home's prometheus_multiproc_dir when it starts, which would freeze the /metrics of a `make
    serve` running on the project's home."""
    import bentoml

    model = bentoml.models.get(champ.bento_tag)
    home = tmp / "bentoml-home"
    shutil.copytree(model.path, home / "models" / model.tag.name / model.tag.version)
    return home


def bench_ours(cfg: Config, champ: Champion, tmp: Path, run: Run) -> None:
    image, label = payloads.single()
    images, labels = payloads.digits(cfg.batch)
    single = tmp / "predict.json"
    single.write_bytes(payloads.predict_json(image))
    batch = tmp / "predict_batch.json"
    batch.write_bytes(payloads.batch_json(images))
    npy_body, npy_type = payloads.npy_multipart(images)
    npy = tmp / "predict_npy.multipart"
    npy.write_bytes(npy_body)

    port = servers.free_port()
    base = f"http://127.0.0.1:{port}"
    argv = [str(BIN / "bentoml"), "serve", "service.service:DigitClassifier"]
    argv += ["--host", "127.0.0.1", "--port", str(port)]
    env = server_env(DIGIT_MODEL_TAG=champ.bento_tag, BENTOML_HOME=str(private_home(tmp, champ)))
    settings = [Setting("ours", "/predict", c) for c in cfg.connections]
    batch_settings = [
        Setting("ours", endpoint, cfg.batch_connections, cfg.batch)
        for endpoint in ("/predict_batch", "/predict_npy")
    ]
    print(f"==> starting our service ({champ.bento_tag}) on {base}", flush=True)
    try:
        with servers.running(
            "bentoml serve",
            argv,
            f"{base}/readyz",
            cwd=ROOT,
            log=tmp / "bentoml.log",
            env=env,
            timeout_s=cfg.start_timeout_s,
        ) as server:
            run.served_runtime = requests.get(f"{base}/model", timeout=30).json()["runtime"]
            print(f"    serving on {run.served_runtime} (DIGIT_RUNTIME=auto)", flush=True)
            one = load.Target(f"{base}/predict", single)
            for s in settings:
                run.outcomes.append(
                    measure(s, one, check_ours_single(label, champ.version), cfg, tmp, server)
                )
            targets = {
                "/predict_batch": load.Target(f"{base}/predict_batch", batch),
                "/predict_npy": load.Target(f"{base}/predict_npy", npy, npy_type),
            }
            check = check_batch(labels.tolist(), champ.version)
            for s in batch_settings:
                run.outcomes.append(measure(s, targets[s.endpoint], check, cfg, tmp, server))
    except servers.ServerError as err:
        run.problems.append(f"our service did not start: {err}")
        done = {o.setting for o in run.outcomes}
        for s in [*settings, *batch_settings]:
            if s not in done:
                run.outcomes.append(Outcome(s, error="our service did not start"))


def bench_rollout(cfg: Config, champ: Champion, tmp: Path, run: Run) -> None:
    """A hot swap under load, then the shadow's cost at the /predict settings (bench/rollout.py)."""
    home = private_home(tmp / "rollout", champ)
    rollout.point(home, champ.bento_tag, "latest")
    env = server_env(BENTOML_HOME=str(home))
    argv = [str(BIN / "bentoml"), "serve", "service.service:DigitClassifier", "--host", "127.0.0.1"]
    settings = rollout.shadow_settings()
    try:
        new = rollout.bench_swap(champ, home, tmp, env, argv, run)
        rollout.point(home, champ.bento_tag, "challenger")  # the old champion, in the shadow
        port = servers.free_port()
        base = f"http://127.0.0.1:{port}"
        print(f"==> starting our service with the challenger in the shadow on {base}", flush=True)
        with servers.running(
            "bentoml serve",
            [*argv, "--port", str(port)],
            f"{base}/readyz",
            cwd=ROOT,
            log=tmp / "bentoml-shadow.log",
            env={**env, "DIGIT_MODEL_TAG": new, "DIGIT_SHADOW_SHARE": "1"},
            timeout_s=cfg.start_timeout_s,
        ) as server:
            body = tmp / "predict-shadow.json"
            image, label = payloads.single()
            body.write_bytes(payloads.predict_json(image))
            target = load.Target(f"{base}/predict", body)
            check = check_ours_single(label, f"{champ.version}-next")  # rollout.next_version
            for s in settings:
                run.outcomes.append(measure(s, target, check, cfg, tmp, server))
            run.rollout["shadow"] = rollout.shadow_metrics(base)
    except servers.ServerError as err:
        run.problems.append(f"the rollout measurement's server did not start: {err}")
        done = {o.setting for o in run.outcomes}
        missing = [s for s in settings if s not in done]
        run.outcomes += [Outcome(s, error="server did not start") for s in missing]


def bench_mlflow(cfg: Config, champ: Champion, tmp: Path, run: Run) -> None:
    image, label = payloads.single()
    body = tmp / "invocations.json"
    body.write_bytes(payloads.mlflow_json(image))
    port = servers.free_port()
    base = f"http://127.0.0.1:{port}"
    uri = f"models:/{champ.name}/{champ.version}"
    argv = [str(BIN / "mlflow"), "models", "serve", "-m", uri, "--env-manager", "local"]
    argv += ["--host", "127.0.0.1", "--port", str(port)]
    settings = [Setting("mlflow", "/invocations", c) for c in cfg.connections]
    print(f"==> starting mlflow models serve ({uri}) on {base}", flush=True)
    try:
        with servers.running(
            "mlflow models serve",
            argv,
            f"{base}/ping",
            cwd=ROOT,
            log=tmp / "mlflow.log",
            env=server_env(),
            timeout_s=cfg.start_timeout_s,
        ) as server:
            target = load.Target(f"{base}/invocations", body)
            for s in settings:
                run.outcomes.append(measure(s, target, check_mlflow(label), cfg, tmp, server))
    except servers.ServerError as err:
        run.problems.append(f"mlflow models serve did not start: {err}")
        done = {o.setting for o in run.outcomes}
        run.outcomes += [
            Outcome(s, error="server did not start") for s in settings if s not in done
        ]


def inprocess_runtimes() -> tuple[str, ...]:
    """Every runtime this CPU runs (bf16 only with AVX-512 BF16), TensorFlow first."""
    from common import runtimes

    here = runtimes.cpu_capabilities()
    return tuple(r for r in runtimes.RUNTIMES if runtimes.runs_here(r, here))


def bench_inprocess(cfg: Config, champ: Champion, run: Run) -> None:
    """Each runtime in process, each call in a fresh process, interleaved `rounds` times (the
    machine's speed drifts within minutes: facts.md); `run.inprocess` is the served runtime's."""
    print("==> in-process ceiling: each runtime without a server", flush=True)
    names = inprocess_runtimes()
    for i in range(cfg.inprocess_rounds):
        for name in names:
            argv = [sys.executable, "-m", "bench.inprocess", "--tag", champ.bento_tag]
            argv += ["--batch", str(cfg.batch), "--runtime", name]
            proc = subprocess.run(
                argv, cwd=ROOT, capture_output=True, text=True, timeout=900, check=False
            )
            lines = proc.stdout.strip().splitlines()
            if proc.returncode != 0 or not lines:
                run.inprocess_error = f"exit {proc.returncode}: {proc.stderr.strip()[-500:]}"
                run.problems.append(f"in-process measurement failed: {run.inprocess_error}")
                return
            figures = json.loads(lines[-1])
            run.runtimes.setdefault(name, []).append(figures)
            print(
                f"    round {i + 1}, {name} (served as {figures['runtime']}): batch "
                f"{figures['batch']:.0f}: {figures['batch_images_per_s']:,.0f} images/s; one "
                f"image: {figures['single_ms_p50']:.2f} ms; loaded in {figures['load_s']:.1f} s",
                flush=True,
            )
    served = run.served_runtime if run.served_runtime in run.runtimes else "keras"
    rounds = run.runtimes.get(served, [])
    if rounds:
        run.inprocess = sorted(rounds, key=lambda f: f["batch_images_per_s"])[len(rounds) // 2]


def bench_footprint(cfg: Config, champ: Champion, tmp: Path, run: Run) -> None:
    """Time to ready and memory per worker, TensorFlow (`keras`) against `auto`."""
    home = private_home(tmp / "footprint", champ)
    env = server_env(DIGIT_MODEL_TAG=champ.bento_tag, BENTOML_HOME=str(home))
    argv = [str(BIN / "bentoml"), "serve", "service.service:DigitClassifier", "--host", "127.0.0.1"]
    try:
        run.footprint = footprint.compare(
            ("keras", "auto"), argv, env, ROOT, tmp, timeout_s=cfg.start_timeout_s
        )
    except servers.ServerError as err:
        run.problems.append(f"footprint: a server did not start: {err}")


def bench_score(cfg: Config, champ: Champion, run: Run) -> None:
    """`digit-mlops score` in process on a folder of PNGs (bench/score.py): the files path, beside
    the batch endpoints' figures."""
    print(f"==> digit-mlops score on {cfg.score_pictures:,} PNGs, in process", flush=True)
    argv = [sys.executable, "-m", "bench.score", "--n", str(cfg.score_pictures)]
    env = {**os.environ, "DIGIT_MODEL_TAG": champ.bento_tag}
    proc = subprocess.run(
        argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800, check=False
    )
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        run.score_error = f"exit {proc.returncode}: {proc.stderr.strip()[-500:]}"
        run.problems.append(f"digit-mlops score measurement failed: {run.score_error}")
        return
    run.score = json.loads(lines[-1])
    print(f"    {lines[0]}", flush=True)


def _terminate(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")  # unwinds through every `finally`: servers stop


def main() -> int:
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even when started in background
    cfg = Config.from_env()
    champ = resolve_champion()
    print(f"==> champion: {champ.name} v{champ.version} (run {champ.run_id})", flush=True)
    run = Run(
        started_utc=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        duration_s=cfg.duration_s,
        warmup_s=cfg.warmup_s,
        threads=cfg.threads,
        champion=champ,
        environment=machine.describe(),
    )
    try:
        with tempfile.TemporaryDirectory(prefix="digit-bench-") as tmp:
            bench_ours(cfg, champ, Path(tmp), run)
            if cfg.rollout:
                bench_rollout(cfg, champ, Path(tmp), run)
            if cfg.mlflow:
                bench_mlflow(cfg, champ, Path(tmp), run)
            if cfg.footprint:
                bench_footprint(cfg, champ, Path(tmp), run)
        bench_inprocess(cfg, champ, run)
        if cfg.score_pictures:
            bench_score(cfg, champ, run)
    except load.LoadError as err:
        run.problems.append(str(err))
        print(f"bench: {err}", file=sys.stderr)
    except KeyboardInterrupt:
        print("bench: interrupted; servers stopped, nothing written", file=sys.stderr)
        return 130
    verdicts = judge(run)
    report.write(cfg.output, run, verdicts)
    print()
    print(report.targets_table(verdicts))
    print()
    print(report.settings_table(run.outcomes))
    print(f"\n==> wrote {cfg.output}")
    for problem in run.problems:
        print(f"bench: harness problem: {problem}", file=sys.stderr)
    return 1 if run.problems else 0


if __name__ == "__main__":
    sys.exit(main())
