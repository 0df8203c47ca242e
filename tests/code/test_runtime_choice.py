"""The eligibility rule (common/runtimes.py) and which runtime a worker picks (service/runtime.py),
on model cards and CPUs of every kind: with and without BF16/VNNI, IRs present or missing."""

from __future__ import annotations

from pathlib import Path

import pytest

from common import runtimes
from common.card import ModelCard, RuntimeCheck
from service.runtime import candidates, probe_tolerance

ZEN3 = {"FP32", "INT8", "BIN", "EXPORT_IMPORT"}  # AVX2: no VNNI, no BF16 (OpenVINO's own words)
ZEN4 = {"FP32", "BF16", "INT8", "BIN", "EXPORT_IMPORT"}


@pytest.mark.parametrize(
    ("accuracy", "agreement", "eligible"),
    [
        (0.9963, 1.0, True),
        (0.9963, 0.999, True),  # exactly the agreement bound
        (0.9963, 0.9989, False),  # just under it
        (0.9958, 0.9995, True),  # 0.05 points lower: the bound
        (0.9957, 0.9995, False),  # 0.06 points lower
        (0.9970, 0.9993, True),  # better than Keras is never a reason to refuse
        (0.9948, 0.9971, False),  # all-layer int8 as measured on Zen 5
    ],
)
def test_the_rule_needs_agreement_and_accuracy(accuracy, agreement, eligible):
    ok, why = runtimes.verdict(accuracy, agreement, keras_accuracy=0.9963)
    assert ok is eligible
    assert (f"agrees on {agreement:.2%}, accuracy" in why) is eligible
    assert eligible or "points below Keras" in why or "< 99.9%" in why


def card(**checks: RuntimeCheck) -> ModelCard:
    return ModelCard(
        registered_model="m",
        mlflow_version="1",
        runtimes={name.replace("_", "-"): c for name, c in checks.items()},
    )


YES = RuntimeCheck(eligible=True, why="agrees", accuracy=0.99, agreement=1.0)
NO = RuntimeCheck(eligible=False, why="agrees with Keras on 99.71% of the test (< 99.9%)")


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    for ir in {runtimes.IR[r] for r in runtimes.IR}:
        (tmp_path / runtimes.OPENVINO_DIR / ir).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / runtimes.OPENVINO_DIR / ir).write_text("<net/>")
    return tmp_path


def chosen(found) -> str:
    return next(c.runtime for c in found if not c.skipped)


def every_check(int8=YES, bf16=YES, fp32=YES) -> ModelCard:
    return card(keras=YES, openvino_fp32=fp32, openvino_bf16=bf16, openvino_int8=int8)


def test_auto_takes_int8_when_eligible_on_either_cpu(folder):
    for cpu in (ZEN3, ZEN4):
        assert chosen(candidates("auto", every_check(), folder, cpu)) == runtimes.INT8


def test_auto_passes_over_an_ineligible_int8_and_says_why(folder):
    found = candidates("auto", every_check(int8=NO), folder, ZEN4)
    assert chosen(found) == runtimes.BF16
    assert found[0].runtime == runtimes.INT8 and "not eligible: agrees" in found[0].skipped
    # without AVX-512 BF16 the bf16 hint would silently run fp32: it is not offered
    found = candidates("auto", every_check(int8=NO), folder, ZEN3)
    assert chosen(found) == runtimes.FP32
    assert "no bf16" in found[1].skipped


def test_keras_when_nothing_else_may_serve(folder):
    assert chosen(candidates("auto", card(), folder, ZEN4)) == runtimes.KERAS  # old package
    found = candidates("auto", every_check(NO, NO, NO), folder, ZEN4)
    assert [c.runtime for c in found] == list(runtimes.FASTEST_FIRST)
    assert chosen(found) == runtimes.KERAS
    # OpenVINO missing or unable to run: Keras, with the reason
    found = candidates("auto", every_check(), folder, set())
    assert chosen(found) == runtimes.KERAS and "cannot run" in found[0].skipped


def test_a_named_runtime_falls_back_to_slower_ones_only(folder):
    assert chosen(candidates("keras", every_check(), folder, ZEN4)) == runtimes.KERAS
    assert chosen(candidates("openvino-fp32", every_check(), folder, ZEN4)) == runtimes.FP32
    found = candidates("openvino-bf16", every_check(), folder, ZEN3)
    assert [c.runtime for c in found] == [runtimes.BF16, runtimes.FP32, runtimes.KERAS]
    assert chosen(found) == runtimes.FP32


def test_a_missing_ir_is_passed_over(folder):
    (folder / runtimes.OPENVINO_DIR / runtimes.IR[runtimes.INT8]).unlink()
    found = candidates("openvino-int8", every_check(), folder, ZEN3)
    assert "IR is missing" in found[0].skipped
    assert chosen(found) == runtimes.FP32  # bf16 was next, but this CPU has none


def test_reduced_precision_gets_a_looser_probe_bound():
    assert probe_tolerance(runtimes.KERAS) == probe_tolerance(runtimes.FP32) < 0.01
    assert probe_tolerance(runtimes.INT8) == probe_tolerance(runtimes.BF16) == 0.25
