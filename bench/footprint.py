"""What a runtime costs a server before any request: time to ready and memory per worker.

Each runtime gets a fresh `bentoml serve` of the champion (nothing cached between them), started
in turn and repeated, so the figures are comparable on one machine: the seconds until `/readyz`
first answers 200, then, once every worker has settled, the resident memory of each worker
process (BentoML's `_bentoml_impl.worker.service`; decoder children not included); then what the
first `/explain` costs (an OpenVINO worker loads TensorFlow for it) and the largest worker after.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import requests

from bench import payloads, servers

WORKER = b"_bentoml_impl.worker.service"
SETTLE_S = 3.0  # after the first worker answers, the others finish loading
JSON = {"Content-Type": "application/json"}


def worker_rss_mib(pid: int) -> list[float]:
    """Resident memory of each worker process under the server `pid`, largest first."""
    found = []
    for p in servers.tree(pid):
        try:
            if WORKER not in Path(f"/proc/{p}/cmdline").read_bytes():
                continue
            status = Path(f"/proc/{p}/status").read_text()
        except OSError:
            continue
        rss = next(line for line in status.splitlines() if line.startswith("VmRSS:"))
        found.append(int(rss.split()[1]) / 1024)
    return sorted(found, reverse=True)


def once(argv: list[str], env: dict[str, str], cwd: Path, log: Path, timeout_s: float) -> dict:
    port = servers.free_port()
    base = f"http://127.0.0.1:{port}"
    t0 = time.monotonic()
    with servers.running(
        "bentoml serve",
        [*argv, "--port", str(port)],
        f"{base}/readyz",
        cwd=cwd,
        log=log,
        env=env,
        timeout_s=timeout_s,
    ) as server:
        ready_s = time.monotonic() - t0
        time.sleep(SETTLE_S)
        rss = worker_rss_mib(server.pid)
        served = requests.get(f"{base}/model", timeout=30).json()["runtime"]
        t1 = time.monotonic()
        explained = requests.post(
            f"{base}/explain",
            data=payloads.predict_json(payloads.single()[0]),
            headers=JSON,
            timeout=120,
        )
        explain_s = time.monotonic() - t1
        explained.raise_for_status()
        after = worker_rss_mib(server.pid)
    return {
        "ready_s": ready_s,
        "worker_rss_mib": rss,
        "runtime": served,
        "first_explain_s": explain_s,
        "largest_worker_after_explain_mib": after[0] if after else float("nan"),
    }


def compare(
    runtimes: tuple[str, ...],
    argv: list[str],
    env: dict[str, str],
    cwd: Path,
    tmp: Path,
    rounds: int = 2,
    timeout_s: float = 120.0,
) -> dict[str, dict]:
    """{DIGIT_RUNTIME: {"runtime": served, "ready_s": [...], "worker_rss_mib": median per
    worker}}, the runtimes started in turn `rounds` times."""
    seen: dict[str, list[dict]] = {r: [] for r in runtimes}
    for i in range(rounds):
        for wanted in runtimes:
            print(f"==> footprint: DIGIT_RUNTIME={wanted}, start {i + 1} of {rounds}", flush=True)
            log = tmp / f"footprint-{wanted}-{i}.log"
            seen[wanted].append(once(argv, {**env, "DIGIT_RUNTIME": wanted}, cwd, log, timeout_s))
    return {
        wanted: {
            "runtime": starts[-1]["runtime"],
            "ready_s": [s["ready_s"] for s in starts],
            "worker_rss_mib": statistics.median(
                statistics.mean(s["worker_rss_mib"]) for s in starts if s["worker_rss_mib"]
            ),
            "workers": len(starts[-1]["worker_rss_mib"]),
            "first_explain_s": [s["first_explain_s"] for s in starts],
            "largest_worker_after_explain_mib": statistics.median(
                s["largest_worker_after_explain_mib"] for s in starts
            ),
        }
        for wanted, starts in seen.items()
    }
