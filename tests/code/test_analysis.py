"""Slices and calibration on hand-built cases whose right answers are known."""

from __future__ import annotations

import numpy as np
import pytest

from pipelines import analysis


def blank(n: int = 1) -> np.ndarray:
    return np.zeros((n, 28, 28), dtype=np.uint8)


def test_ink_counts_pixels_above_127_only():
    img = blank()
    img[0, 5, 5:10] = 200  # 5 ink pixels
    img[0, 6, 5:8] = 127  # faint: not ink
    img[0, 7, 5] = 128  # just ink
    assert analysis.ink_area(img).tolist() == [6]
    assert analysis.ink_area(img[..., None]).tolist() == [6]  # the model's (n, 28, 28, 1) too


def test_bounding_box_spans_the_ink():
    img = blank(3)
    img[0, 4, 6] = img[0, 20, 10] = 255  # rows 4-20, cols 6-10: 17 × 5
    img[1, 10, 10] = 255  # one pixel: 1 × 1
    assert analysis.bbox_area(img).tolist() == [85, 1, 0]  # blank: 0


def test_centre_offset_is_the_ink_centre_of_mass_distance():
    img = blank(3)
    img[0, 13:15, 13:15] = 255  # a 2×2 block on the exact centre (13.5, 13.5)
    img[1, 13:15, 16:18] = 255  # the same block 3 px to the right
    img[1, 0, 0] = 100  # faint, ignored
    assert analysis.centre_offset(img) == pytest.approx([0.0, 3.0, 0.0])  # blank: 0


def test_slices_pick_the_thin_thick_small_large_and_off_centre_images():
    # 8 squares of side 2..9 centred, so ink area and bounding box grow together; and
    # one of them moved to a corner.
    images = blank(8)
    for i, side in enumerate(range(2, 10)):
        images[i, 10 : 10 + side, 10 : 10 + side] = 255
    images[3] = 0
    images[3, 0:5, 0:5] = 255  # side 5, far off-centre
    y_true = np.arange(8)
    y_pred = y_true.copy()
    y_pred[[0, 1]] = 9  # the two thinnest/smallest are wrong

    slices, thresholds = analysis.slice_accuracy(images, y_true, y_pred)

    areas = [s * s for s in range(2, 10)]
    assert thresholds["ink_area_q25"] == pytest.approx(np.quantile(areas, 0.25))
    assert slices["thin"] == {"accuracy": 0.0, "n": 2}  # sides 2, 3
    assert slices["small"] == {"accuracy": 0.0, "n": 2}
    assert slices["thick"] == {"accuracy": 1.0, "n": 2}  # sides 8, 9
    assert slices["large"] == {"accuracy": 1.0, "n": 2}
    assert slices["off_centre"]["n"] == 1
    off = analysis.slice_masks(images, thresholds)["off_centre"]
    assert off.tolist() == [i == 3 for i in range(8)]


def test_ties_put_every_image_in_every_slice():
    # All features equal: the quantile cut-offs equal them too, so no slice is ever empty.
    slices, _ = analysis.slice_accuracy(blank(4), np.zeros(4), np.array([0, 0, 0, 1]))
    assert all(s == {"accuracy": 0.75, "n": 4} for s in slices.values())


def test_perfectly_calibrated_set_has_zero_ece():
    # 4 answers at 0.75 of which 3 are right; 20 at 0.95 of which 19 are right.
    conf = np.array([0.75] * 4 + [0.95] * 20)
    correct = np.array([1, 1, 1, 0] + [1] * 19 + [0], dtype=bool)
    table = analysis.reliability_table(conf, correct, bins=10)
    assert analysis.expected_calibration_error(table) == pytest.approx(0.0, abs=1e-12)


def test_overconfident_set_has_the_known_ece():
    # 10 answers at 0.9 with 5 right (gap 0.4) and 10 at 0.6 with 6 right (gap 0): ECE 0.2.
    conf = np.array([0.9] * 10 + [0.6] * 10)
    correct = np.array([1] * 5 + [0] * 5 + [1] * 6 + [0] * 4, dtype=bool)
    table = analysis.reliability_table(conf, correct, bins=15)
    assert analysis.expected_calibration_error(table) == pytest.approx(0.2)


def test_reliability_table_bins_are_equal_width_and_cover_every_prediction():
    conf = np.array([0.0, 0.2, 0.5, 0.500001, 1.0])
    correct = np.array([0, 1, 1, 0, 1], dtype=bool)
    table = analysis.reliability_table(conf, correct, bins=2)
    assert [(r["lower"], r["upper"]) for r in table] == [(0.0, 0.5), (0.5, 1.0)]
    assert [r["count"] for r in table] == [3, 2]  # (lower, upper]; 0 goes to the first bin
    assert table[0]["confidence"] == pytest.approx(0.7 / 3)
    assert table[0]["accuracy"] == pytest.approx(2 / 3)
    assert table[1]["accuracy"] == pytest.approx(0.5)
    empty = analysis.reliability_table(np.array([0.95]), np.array([True]), bins=4)
    assert [r["count"] for r in empty] == [0, 0, 0, 1]
    assert empty[0]["confidence"] is None and empty[0]["accuracy"] is None


def test_gallery_shows_misclassified_digits_titled_true_to_pred():
    images = blank(30)
    y_true = np.arange(30) % 10
    y_pred = y_true.copy()
    y_pred[[3, 7, 21]] = [5, 1, 0]
    fig, shown = analysis.gallery_figure(images, y_true, y_pred, limit=2)
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert shown == 2 and titles == ["3→5", "7→1"]
    assert "2 of 3 shown" in fig.get_suptitle()
    fig, shown = analysis.gallery_figure(images, y_true, y_true, limit=100)
    assert shown == 0 and "No misclassified" in fig.get_suptitle()


def test_reliability_figure_reports_the_ece(tmp_path):
    table = analysis.reliability_table(np.array([0.9, 0.6]), np.array([True, False]), bins=5)
    ece = analysis.expected_calibration_error(table)
    assert ece == pytest.approx((0.1 + 0.6) / 2)  # right at 0.9, wrong at 0.6
    fig = analysis.reliability_figure(table, ece)
    assert f"{ece:.4f}" in fig.axes[0].get_title()
    fig.savefig(tmp_path / "r.png")
    assert (tmp_path / "r.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
