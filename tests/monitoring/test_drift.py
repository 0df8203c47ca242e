"""The drift reference: the same statistics and buckets as the service's live histograms."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, Histogram

from common import drift
from pipelines import package
from pipelines.prepare import stats
from pipelines.tracking import data_hash
from tests.helpers import FIXTURE


@pytest.fixture(scope="module")
def fixture_digits():
    with np.load(FIXTURE) as f:
        return f["x_train"], f["y_train"]


def prometheus_counts(values: np.ndarray, edges) -> list[int]:
    """Per-bucket counts as prometheus_client's Histogram fills them (the live side)."""
    hist = Histogram("h", "h", buckets=edges, registry=CollectorRegistry())
    for v in values:
        hist.observe(float(v))
    cumulative = [s.value for s in hist.collect()[0].samples if s.name == "h_bucket"]
    return [int(c) for c in np.diff([0.0, *cumulative])]


def test_ink_stats_on_known_images(fixture_digits):
    blank = np.zeros((28, 28), np.uint8)
    block = blank.copy()
    block[4:9, 10:13] = 255  # 5 rows × 3 columns
    mean, size = drift.ink_stats(np.stack([blank, block]))
    assert size.tolist() == [0, 5]
    assert mean.tolist() == pytest.approx([0.0, 15 / 784])
    mean, size = drift.ink_stats(block)
    assert mean.shape == size.shape == (1,) and size[0] == 5
    _, sizes = drift.ink_stats(fixture_digits[0])
    assert sizes.min() >= 15 and sizes.max() == 20  # MNIST digits fill a 20-px box
    with pytest.raises(ValueError, match=r"\(n, 28, 28\)"):
        drift.ink_stats(np.zeros((28, 27)))


def test_bucket_counts_match_prometheus_histograms_even_on_the_edges(fixture_digits):
    means, boxes = drift.ink_stats(fixture_digits[0])
    edges_hit = np.array([*drift.INK_MEAN_BUCKETS, 0.0, 1.5])  # values exactly on an edge
    for values, edges in (
        (means, drift.INK_MEAN_BUCKETS),
        (boxes, drift.INK_BOX_BUCKETS),
        (edges_hit, drift.INK_MEAN_BUCKETS),
    ):
        assert drift.bucket_counts(values, edges) == prometheus_counts(values, edges)


def test_service_histograms_use_the_reference_edges():
    from service import metrics

    assert metrics.INK_MEAN._upper_bounds[:-1] == list(drift.INK_MEAN_BUCKETS)
    assert metrics.INK_BOX._upper_bounds[:-1] == list(drift.INK_BOX_BUCKETS)


def test_live_and_reference_series_carry_the_model_version():
    """monitoring/rules.yml joins each version's inputs with that version's reference on
    model_version, so a hot swap never compares one model's inputs with another's reference."""
    from service import metrics

    assert metrics.INK_MEAN._labelnames == metrics.INK_BOX._labelnames == ("model_version",)
    for gauge in (metrics.REFERENCE_INK_MEAN, metrics.REFERENCE_INK_BOX):
        assert gauge._labelnames == ("le", "model_version")
    assert metrics.REFERENCE_IMAGES._labelnames == ("model_version",)


def test_prepare_writes_the_reference_of_the_training_split(fixture_digits):
    x, y = fixture_digits
    ref = stats(x, y)[drift.REFERENCE_KEY]
    assert ref["n_images"] == len(x)
    assert sum(ref["ink_mean"]["counts"]) == sum(ref["ink_box_pixels"]["counts"]) == len(x)
    assert ref["ink_mean"]["buckets"] == list(drift.INK_MEAN_BUCKETS)
    # MNIST digits fill a 20-px box: nearly all of the reference sits in the (19, 20] bucket
    box = dict(zip([*drift.INK_BOX_BUCKETS, "inf"], ref["ink_box_pixels"]["counts"], strict=True))
    assert box[20] / len(x) > 0.95
    shares = drift.cumulative_shares(drift.Histogram(**ref["ink_mean"]))
    assert shares[-1] == (float("inf"), 1.0)
    assert all(a[1] <= b[1] for a, b in itertools.pairwise(shares))
    json.dumps(ref)  # plain JSON for stats.json and the Bento model's metadata


def _prepared(tmp_path, monkeypatch, x, y, with_reference=True) -> str:
    """A workspace with data/prepared like prepare writes it; returns its data_hash."""
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    out = tmp_path / "data" / "prepared"
    out.mkdir(parents=True)
    splits = {"train": (x[:600], y[:600]), "val": (x[600:700], y[600:700]), "test": (x, y)}
    for name, (xs, ys) in splits.items():
        np.savez(out / f"{name}.npz", x=xs, y=ys)
    s = stats(*splits["train"])
    if not with_reference:
        del s[drift.REFERENCE_KEY]
    (out / "stats.json").write_text(json.dumps(s))
    monkeypatch.chdir(tmp_path)
    return data_hash([a[..., None] if a.ndim == 3 else a for xy in splits.values() for a in xy])


def test_package_takes_the_reference_only_for_the_champions_data(
    tmp_path, monkeypatch, fixture_digits, capsys
):
    digest = _prepared(tmp_path, monkeypatch, *fixture_digits)
    ref = package.drift_reference(digest)
    assert ref is not None and ref.n_images == 600
    assert package.drift_reference("0" * 64) is None
    assert "not the data the champion was trained on" in capsys.readouterr().err


def test_package_goes_without_a_reference_when_stats_json_lacks_it(
    tmp_path, monkeypatch, fixture_digits, capsys
):
    digest = _prepared(tmp_path, monkeypatch, *fixture_digits, with_reference=False)
    assert package.drift_reference(digest) is None
    assert "has no 'drift_reference'" in capsys.readouterr().err
