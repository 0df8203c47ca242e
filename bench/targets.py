"""The issue's serving targets, each judged PASS/FAIL from one run's measurements.

A setting that could not be measured fails its target: an endpoint that does not answer does not
meet a throughput goal.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

from bench.results import Outcome, Run

BATCH_ENDPOINTS = ("/predict_batch", "/predict_npy")


@dataclass(frozen=True)
class Verdict:
    target: str
    passed: bool
    evidence: str


def _missing(o: Outcome | None) -> str:
    if o is None:
        return "not measured"
    return f"not measured: {o.error}" if o.error else "not measured"


def median_rate(rounds: list[dict]) -> float:
    return statistics.median(r["batch_images_per_s"] for r in rounds)


def inprocess_speedup(run: Run) -> Verdict:
    """The served runtime in process against TensorFlow's traced call, same run, same CPU."""
    target = "in process: the served runtime ≥ 3× TensorFlow"
    served, keras = run.runtimes.get(run.served_runtime), run.runtimes.get("keras")
    if not served or not keras:
        return Verdict(target, False, run.inprocess_error or "not measured")
    ratio = median_rate(served) / median_rate(keras)
    evidence = (
        f"{ratio:.2f}× ({run.served_runtime} {median_rate(served):,.0f} vs TensorFlow "
        f"{median_rate(keras):,.0f} images/s, medians of {len(served)} rounds)"
    )
    return Verdict(target, ratio >= 3, evidence)


def judge(run: Run) -> list[Verdict]:
    verdicts = []

    ours = [run.find("ours", "/predict", c) for c in (1, 16, 64)]
    if all(o is not None and o.ok for o in ours):
        bad = {
            o.setting.connections: (o.result.non2xx, o.result.socket_error_total)
            for o in ours
            if o and o.result
        }
        passed = all(n == 0 and s == 0 for n, s in bad.values())
        evidence = "; ".join(
            f"{c} conn: {n} non-2xx, {s} socket errors" for c, (n, s) in bad.items()
        )
    else:
        passed, evidence = False, _missing(next(o for o in ours if o is None or not o.ok))
    verdicts.append(
        Verdict("/predict: every request 2xx at 1, 16 and 64 connections", passed, evidence)
    )

    o64 = run.find("ours", "/predict", 64)
    if o64 and o64.ok and o64.result:
        rate, p99 = o64.predictions_per_s, o64.result.p99_ms
        verdicts.append(
            Verdict(
                "/predict at 64 connections: ≥ 2,500 predictions/s with p99 ≤ 100 ms",
                rate >= 2500 and p99 <= 100,
                f"{rate:,.0f} predictions/s, p99 {p99:.1f} ms ({run.served_runtime})",
            )
        )
    else:
        verdicts.append(
            Verdict("/predict at 64 connections: ≥ 2,500/s, p99 ≤ 100 ms", False, _missing(o64))
        )

    o16, m16 = run.find("ours", "/predict", 16), run.find("mlflow", "/invocations", 16)
    if o16 and o16.ok and m16 and m16.ok and m16.predictions_per_s > 0:
        ratio = o16.predictions_per_s / m16.predictions_per_s
        verdicts.append(
            Verdict(
                "/predict at 16 connections: ≥ 25× `mlflow models serve`",
                ratio >= 25,
                f"{ratio:.1f}× ({o16.predictions_per_s:,.0f} vs "
                f"{m16.predictions_per_s:,.1f} predictions/s)",
            )
        )
    else:
        why = _missing(o16) if not (o16 and o16.ok) else _missing(m16)
        verdicts.append(Verdict("/predict at 16 connections: ≥ 25× mlflow", False, why))

    o1 = run.find("ours", "/predict", 1)
    if o1 and o1.ok and o1.result:
        verdicts.append(
            Verdict(
                "/predict at 1 connection: p50 ≤ 5 ms",
                o1.result.p50_ms <= 5,
                f"p50 {o1.result.p50_ms:.2f} ms",
            )
        )
    else:
        verdicts.append(Verdict("/predict at 1 connection: p50 ≤ 5 ms", False, _missing(o1)))

    verdicts.append(inprocess_speedup(run))
    for endpoint in BATCH_ENDPOINTS:
        o = run.find("ours", endpoint)
        target = f"{endpoint}: ≥ 10,000 images/s"
        if o and o.ok:
            rate = o.predictions_per_s
            n, c = o.setting.images_per_request, o.setting.connections
            evidence = f"{rate:,.0f} images/s ({n} images/request, {c} connections)"
            verdicts.append(Verdict(target, rate >= 10_000, evidence))
        else:
            verdicts.append(Verdict(target, False, _missing(o)))
    return verdicts
