"""The train stage's progress line: where the run stands and how long is left."""

from __future__ import annotations

from pipelines.train import Progress, progress_line


def test_time_left_is_the_mean_epoch_times_the_epochs_to_go():
    assert progress_line(7, 0, 18, 7 * 40.0) == "epoch 7/18, about 7 min left"  # 11 × 40 s
    assert progress_line(17, 0, 18, 17 * 40.0) == "epoch 17/18, about 40 s left"
    assert progress_line(18, 0, 18, 18 * 40.0) == "epoch 18/18, done in 12.0 min"


def test_a_resumed_run_times_only_the_epochs_it_ran():
    # Resumed after epoch 10: two epochs of 60 s in this attempt, six to go.
    assert progress_line(12, 10, 18, 120.0) == "epoch 12/18, about 6 min left"


def test_the_callback_prints_after_each_epoch(capsys):
    now = iter([0.0, 30.0, 60.0])
    cb = Progress(first=0, last=3, clock=lambda: next(now))
    cb.on_train_begin()
    cb.on_epoch_end(0)
    cb.on_epoch_end(1)
    err = capsys.readouterr().err.splitlines()
    assert err == ["train: epoch 1/3, about 60 s left", "train: epoch 2/3, about 30 s left"]
