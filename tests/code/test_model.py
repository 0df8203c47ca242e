"""The model builder: compute accounting, shared weights, augmentation placement, LR schedules."""

from __future__ import annotations

import numpy as np
import pytest

from pipelines import model as m
from pipelines.params import ParamsError, load, parse
from tests.helpers import REPO, merge


def _cfg(**train):
    """The repo's train params with `train` overriding them; no warm-up unless a test asks."""
    raw = load(REPO / "params.yaml").model_dump()
    return parse(merge(raw, {"train": {"warmup_epochs": 0, **train}})).train


def test_forward_macs_by_hand():
    cfg = _cfg(
        conv_filters=[2],
        convs_per_block=1,
        padding="valid",
        downsample="pool",
        dense_units=0,
        dropout=0.0,
    )
    served, _ = m.build(cfg)
    conv = 26 * 26 * 3 * 3 * 1 * 2  # 26×26 outputs, 3×3 kernel, 1 → 2 channels
    dense = 13 * 13 * 2 * 10  # flattened 13×13×2 features → 10 classes
    assert m.forward_macs(served) == conv + dense


def test_deotte_architecture_matches_its_published_size():
    # 32C3-32C3-32C5S2 → 64C3-64C3-64C5S2 → 128 → 10 with BatchNorm: about 327k parameters.
    cfg = _cfg(
        conv_filters=[32, 64],
        convs_per_block=2,
        padding="valid",
        downsample="conv",
        batch_norm=True,
        block_dropout=0.4,
        dense_units=128,
        dropout=0.4,
    )
    served, _ = m.build(cfg)
    assert served.count_params() == 326_826
    assert m.forward_macs(served) == 15_162_752


def test_augmentation_only_in_the_training_model_and_weights_shared():
    cfg = _cfg(augment={"rotation_degrees": 10.0, "zoom": 0.1, "translation": 0.1})
    served, trainer = m.build(cfg, seed=1)
    assert not any(layer.name.startswith("aug_") for layer in served.layers)
    assert {"aug_rotate", "aug_zoom", "aug_translate"} <= {layer.name for layer in trainer.layers}
    assert served.count_params() == trainer.count_params()
    x = np.random.default_rng(0).integers(0, 256, (4, 28, 28, 1)).astype(np.uint8)
    # At inference the augmentation is the identity: both models give the same answer.
    np.testing.assert_allclose(
        served.predict(x, verbose=0), trainer.predict(x, verbose=0), rtol=1e-5, atol=1e-6
    )


def _lr(schedule, step: int) -> float:
    return float(schedule(step)) if callable(schedule) else float(schedule)


def test_cosine_with_warmup_rises_then_decays_to_zero():
    cfg = _cfg(epochs=10, learning_rate=0.002, lr_schedule="cosine", warmup_epochs=2)
    sched = m.learning_rate(cfg, steps_per_epoch=100)
    assert _lr(sched, 0) == pytest.approx(0.0, abs=1e-4)
    assert _lr(sched, 200) == pytest.approx(0.002, rel=1e-3)
    assert _lr(sched, 600) < _lr(sched, 400) < 0.002
    assert _lr(sched, 1000) == pytest.approx(0.0, abs=1e-6)


def test_exponential_decays_per_epoch():
    cfg = _cfg(epochs=10, learning_rate=0.001, lr_schedule="exponential", lr_decay=0.95)
    sched = m.learning_rate(cfg, steps_per_epoch=100)
    assert _lr(sched, 0) == pytest.approx(0.001)
    assert _lr(sched, 99) == pytest.approx(0.001)
    assert _lr(sched, 300) == pytest.approx(0.001 * 0.95**3, rel=1e-5)


def test_constant_without_warmup_is_a_plain_number():
    assert m.learning_rate(_cfg(lr_schedule="constant", learning_rate=0.01), 10) == 0.01


def test_warmup_longer_than_training_is_refused():
    with pytest.raises(ParamsError, match="warmup_epochs must be smaller"):
        _cfg(epochs=3, warmup_epochs=3)


def _bn_cfg():
    return _cfg(
        conv_filters=[4],
        convs_per_block=1,
        batch_norm=True,
        block_dropout=0.0,
        dense_units=8,
        dropout=0.0,
        augment={},
    )


def test_fused_batch_norm_trains_like_keras_batch_norm():
    """The fused kernel is a speed-up, not another layer: same outputs, same moving statistics."""
    import keras
    import tensorflow as tf

    x = tf.constant(np.random.default_rng(0).normal(3.0, 2.0, (16, 6, 6, 5)), tf.float32)
    for shape_x in (x, tf.reshape(x, (16, -1))):  # after a conv, and after a Dense layer
        fused, plain = m.FusedBatchNorm(momentum=0.9), keras.layers.BatchNormalization(momentum=0.9)
        for layer in (fused, plain):
            layer.build(shape_x.shape)
            layer.gamma.assign(np.linspace(0.5, 1.5, shape_x.shape[-1]))
            layer.beta.assign(np.linspace(-1.0, 1.0, shape_x.shape[-1]))
        with tf.GradientTape(persistent=True) as tape:
            tape.watch(shape_x)
            y_fused, y_plain = fused(shape_x, training=True), plain(shape_x, training=True)
            loss_f = tf.reduce_sum(tf.square(y_fused) * tf.range(1.0, 1.0 + shape_x.shape[-1]))
            loss_p = tf.reduce_sum(tf.square(y_plain) * tf.range(1.0, 1.0 + shape_x.shape[-1]))
        np.testing.assert_allclose(y_fused, y_plain, atol=1e-4)
        np.testing.assert_allclose(
            tape.gradient(loss_f, shape_x), tape.gradient(loss_p, shape_x), atol=1e-3
        )
        np.testing.assert_allclose(fused.moving_mean, plain.moving_mean, rtol=1e-5)
        np.testing.assert_allclose(fused.moving_variance, plain.moving_variance, rtol=1e-5)
        np.testing.assert_allclose(  # inference is Keras' own code in both
            fused(shape_x, training=False), plain(shape_x, training=False), atol=1e-4
        )


def test_plain_copy_answers_alike_and_loads_without_our_code(tmp_path):
    import keras

    cfg = _bn_cfg()
    net, trainer = m.build(cfg, seed=3)
    m.compile_for_training(trainer, cfg, steps_per_epoch=2)
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, (32, 28, 28, 1)).astype(np.uint8)
    y = keras.utils.to_categorical(rng.integers(0, 10, 32), 10)
    trainer.fit(x, y, batch_size=16, epochs=1, verbose=0)  # moves the BatchNorm statistics
    assert any(isinstance(layer, m.FusedBatchNorm) for layer in net.layers)
    served = m.plain(net, cfg)
    assert not any(isinstance(layer, m.FusedBatchNorm) for layer in served.layers)
    np.testing.assert_array_equal(served.predict(x, verbose=0), net.predict(x, verbose=0))
    served.save(tmp_path / "model.keras")
    config = (tmp_path / "model.keras").read_bytes()
    assert b"FusedBatchNorm" not in config  # the serving side never imports pipelines/
