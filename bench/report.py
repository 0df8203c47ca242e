"""Write bench/RESULTS.md: the run's facts, the targets, a table per setting, the ceiling.

Everything from the `<!-- notes -->` line on is hand-written analysis ("What limits it") and is
carried over untouched each time the generator rewrites the file.
"""

from __future__ import annotations

import os
from pathlib import Path

from bench.results import Outcome, Run
from bench.targets import Verdict

MARKER = "<!-- notes -->"
DEFAULT_NOTES = f"""{MARKER}
## What limits it

_Written by hand after a full run on an otherwise idle machine; `make bench` keeps this section._
"""
SHORT_RUN_S = 10


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _percent(value: str) -> str:
    try:
        return f"{float(value):.2%}"
    except ValueError:
        return value


def settings_table(outcomes: list[Outcome]) -> str:
    head = (
        "| server | endpoint | connections | images/request | req/s | predictions/s "
        "| p50 ms | p95 ms | p99 ms | non-2xx | socket errors | status |\n"
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"
    )
    rows = [head]
    for o in outcomes:
        s, r = o.setting, o.result
        front = f"| {s.server} | `{s.endpoint}` | {s.connections} | {s.images_per_request} "
        if r is None:
            rows.append(front + f"| – | – | – | – | – | – | – | FAILED: {_cell(o.error or '?')} |")
            continue
        errors = ", ".join(f"{k} {v}" for k, v in r.socket_errors.items() if v) or "0"
        notes = [f"FAILED: {_cell(o.error)}"] if o.error else []
        if r.non2xx:
            codes = ", ".join(f"{k}×{v}" for k, v in sorted(r.statuses.items()))
            notes.append(f"non-2xx: {codes}; first body: `{_cell(r.sample[:120])}`")
        status = "; ".join(notes) or "ok"
        rows.append(
            front + f"| {r.rps:,.1f} | {o.predictions_per_s:,.1f} | {r.p50_ms:.2f} "
            f"| {r.p95_ms:.2f} | {r.p99_ms:.2f} | {r.non2xx} | {errors} | {status} |"
        )
    return "\n".join(rows)


def targets_table(verdicts: list[Verdict]) -> str:
    rows = ["| target | result | measured |", "| --- | --- | --- |"]
    rows += [
        f"| {v.target} | {'PASS' if v.passed else '**FAIL**'} | {_cell(v.evidence)} |"
        for v in verdicts
    ]
    return "\n".join(rows)


def inprocess_section(run: Run) -> str:
    if not run.runtimes:
        return f"Not measured: {run.inprocess_error or 'unknown error'}"
    head = (
        "| runtime | images/s, batch (median; range) | one image p50 / p99 ms | GFLOP/s "
        "| load s | process RSS MiB | TensorFlow loaded |\n"
        "| --- | ---: | ---: | ---: | ---: | ---: | --- |"
    )
    rows = [head]
    for name, rounds in run.runtimes.items():
        rates = sorted(r["batch_images_per_s"] for r in rounds)
        mid = sorted(rounds, key=lambda r: r["batch_images_per_s"])[len(rounds) // 2]
        served = "" if mid["runtime"] == name else f" (fell back to {mid['runtime']})"
        mark = " **(served)**" if name == run.served_runtime else ""
        rows.append(
            f"| {name}{served}{mark} | {mid['batch_images_per_s']:,.0f} "
            f"({rates[0]:,.0f}-{rates[-1]:,.0f}) | {mid['single_ms_p50']:.2f} / "
            f"{mid['single_ms_p99']:.2f} | {mid['gflops']:.0f} | {mid['load_s']:.1f} "
            f"| {mid['rss_mib']:,.0f} | {'yes' if mid['tensorflow_loaded'] else 'no'} |"
        )
    ip = next(iter(run.runtimes.values()))[0]
    return (
        "\n".join(rows) + f"\n\nThe service's own forward call (service/models.py) on a batch of "
        f"{ip['batch']:.0f} ({ip['chunk']:.0f} images per call, {ip['threads']:.0f} calls side "
        f"by side, {ip.get('intra_op_threads', 1):.0f} thread(s) each: every core, as a worker "
        f"runs a large batch), each runtime in a fresh process, the runtimes interleaved "
        f"{len(next(iter(run.runtimes.values())))} times. The model costs "
        f"{ip['macs_per_image'] / 1e6:.2f} M multiply-adds per image. load s: imports, model "
        "load or compilation, warm-up and the probe check, as a worker starts."
    )


def footprint_section(run: Run) -> str:
    """Time to ready and memory per worker by DIGIT_RUNTIME (bench/footprint.py)."""
    if not run.footprint:
        return "Not measured in this run (BENCH_FOOTPRINT=0, or a server did not start)."
    rows = [
        "| DIGIT_RUNTIME | serves on | time to ready, s (each start) | RSS per worker, MiB "
        "| first `/explain`, s | largest worker after it, MiB |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for wanted, f in run.footprint.items():
        starts = ", ".join(f"{s:.1f}" for s in f["ready_s"])
        explains = ", ".join(f"{s:.1f}" for s in f["first_explain_s"])
        rows.append(
            f"| {wanted} | {f['runtime']} | {starts} | {f['worker_rss_mib']:,.0f} "
            f"(×{f['workers']}) | {explains} | {f['largest_worker_after_explain_mib']:,.0f} |"
        )
    return (
        "\n".join(rows)
        + "\n\nA fresh `bentoml serve` of the champion per start, the runtimes in turn, no "
        "request sent: seconds until `/readyz` first answers, then each worker's resident memory "
        "once all have loaded (median over starts of the workers' mean). An OpenVINO worker loads "
        "TensorFlow only at its first `/explain`, which then adds TensorFlow's share back."
    )


def score_section(run: Run) -> str:
    """`digit-mlops score` on a folder of PNGs (bench/score.py), or why it is missing."""
    sc = run.score
    if sc is None:
        return f"Not measured: {run.score_error or 'BENCH_SCORE=0'}"
    accuracy = f"; accuracy on them {sc['accuracy']:.2%}" if sc.get("accuracy") is not None else ""
    return (
        f"`digit-mlops score DIR --labels` in process on {sc['images']:,} PNGs of "
        f"{sc['side']}×{sc['side']} px (test digits from `{sc['source']}`, one file each): "
        f"**{sc['images_per_s']:,.0f} images/s** while scoring ({sc['scoring_s']:.1f} s: every "
        f"file read and made MNIST-like by the service's own preprocessing, batched model calls), "
        f"{sc['wall_s']:.1f} s wall with start-up and model load "
        f"({sc['wall_images_per_s']:,.0f}/s); {sc['jobs']} decoding process(es){accuracy}. "
        "Decoding the pictures, not the model, sets this pace; the batch endpoints above take "
        "decoded arrays."
    )


def rollout_section(run: Run) -> str:
    """The hot swap and the shadow (bench/rollout.py), or why they are missing."""
    swap, shadow = run.rollout.get("swap"), run.rollout.get("shadow")
    if swap is None:
        return "Not measured in this run (BENCH_ROLLOUT=0, or its server did not start)."
    failures = f" ({'; '.join(swap['failures'])})" if swap["failures"] else ""
    switched = "" if swap["switched"] else " **Not every worker switched in time.**"
    lines = [
        f"A new champion (the same weights under a new tag) put at `:latest` under a closed-loop "
        f"load of {swap['connections']} connections on `/predict`; each of the "
        f"{swap['workers']} workers swaps on its own at its next look at the store (every 2 s).",
        "",
        "| what | measured |",
        "| --- | ---: |",
        f"| replies in the whole window | {swap['replies']:,} |",
        f"| failed (non-2xx or connection error) | {swap['failed']}{failures} |",
        f"| from the move of `:latest` to the last worker's switch | {swap['swap_s']:.1f} s |",
        f"| replies answered meanwhile | {swap['during']:,} |",
        f"| longest reply meanwhile | {swap['during_max_ms']:.0f} ms |",
        f"| before the swap: p99 / longest reply | {swap['before_p99_ms']:.0f} / "
        f"{swap['before_max_ms']:.0f} ms |",
        f"| versions seen in replies | {', '.join(swap['versions'])} |",
        "",
        f"{switched}",
    ]
    rows = [o for o in run.outcomes if o.setting.server == "ours+shadow" and o.ok]
    if shadow is not None and rows:
        lines.append(
            "The shadow: the same service with `DIGIT_SHADOW_SHARE=1` and the previous champion "
            "as challenger; compare with the `ours /predict` rows of the same run above."
        )
        lines += ["", "| /predict | shadow off p50 / p99 ms | shadow on p50 / p99 ms |"]
        lines.append("| --- | ---: | ---: |")
        for o in rows:
            off = run.find("ours", "/predict", o.setting.connections)
            off_ms = f"{off.result.p50_ms:.2f} / {off.result.p99_ms:.2f}" if off and off.ok else "-"
            on = f"{o.result.p50_ms:.2f} / {o.result.p99_ms:.2f}"
            lines.append(f"| {o.setting.connections} connection(s) | {off_ms} | {on} |")
        lines.append(
            f"\nImages compared in the shadow: {shadow['compared']:,.0f}; skipped (backlog "
            f"full): {shadow['skipped']:,.0f}."
        )
    return "\n".join(lines).rstrip()


def render(run: Run, verdicts: list[Verdict], notes: str) -> str:
    c = run.champion
    accuracy = _percent(c.test_accuracy)
    env = run.environment
    warning = ""
    if run.duration_s < SHORT_RUN_S:
        warning += (
            f"\n> **Short run ({run.duration_s} s per setting): a mechanics check, the numbers "
            f"mean little.** The real run is `make bench` with the default 10 s.\n"
        )
    cores = len(os.sched_getaffinity(0))
    load = float(env["load average at start"].split()[0])
    if load > 0.5 * cores:
        warning += (
            f"\n> **The machine was busy when this run started (load {load:.2f} on {cores} "
            "cores): other work shared the CPU, so these numbers understate the service.**\n"
        )
    problems = "".join(f"\n> Harness problem: {_cell(p)}\n" for p in run.problems)
    facts = "\n".join(f"- **{k}**: {v}" for k, v in env.items())
    return f"""# Serving benchmark

Generated by `make bench` (bench/); rerun it to refresh everything above the notes marker.
{warning}{problems}
## Run

- **date**: {run.started_utc}
{facts}
- **champion**: `{c.name}` version {c.version} (run `{c.run_id}`, test accuracy {accuracy}),
  served by us as Bento model `{c.bento_tag}` on **{run.served_runtime}** (`DIGIT_RUNTIME=auto`)
  and by mlflow as `models:/{c.name}/{c.version}`
- **per setting**: {run.warmup_s} s warm-up (discarded), then {run.duration_s} s measured;
  wrk with up to {run.threads} threads, one request body repeated

## Targets

{targets_table(verdicts)}

## Per setting

{settings_table(run.outcomes)}

predictions/s counts only 2xx replies (× images per request). wrk runs closed-loop (each
connection sends its next request when the reply arrives) on the same machine, sharing its CPU;
latencies run from sending a request to its last byte and cover completed requests only, so
requests still in flight when a window closes are not counted (noticeable only when a request
takes a large share of the window). After each wrk run the harness waits until the server has
finished what wrk left in flight, so no setting inherits the previous one's backlog.

## In-process ceiling (no HTTP), every runtime

{inprocess_section(run)}

## Time to ready and memory per worker

{footprint_section(run)}

## Scoring a folder: `digit-mlops score`

{score_section(run)}

## Rollout: a hot swap under load, and the shadow's cost

{rollout_section(run)}

{notes.rstrip()}
"""


def existing_notes(path: Path) -> str:
    """The hand-written tail of the current file, from the marker on (or the default section)."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return DEFAULT_NOTES
    at = text.find(MARKER)
    return text[at:] if at >= 0 else DEFAULT_NOTES


def write(path: Path, run: Run, verdicts: list[Verdict]) -> None:
    """Rewrite the file atomically, keeping the notes."""
    text = render(run, verdicts, existing_notes(path))
    tmp = path.with_suffix(".md.tmp")
    tmp.write_text(text)
    tmp.replace(path)
