"""The CNN, built from params.yaml.

The served model takes raw uint8 pixels: scaling lives inside it, so training, evaluation and
every serving path feed it the same thing. Augmentation layers sit only in the *training* model,
which shares every weight with the served one, so serving is untouched by them.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TF's C++ start-up chatter out of logs

import keras
import tensorflow as tf

from common.image import MODEL_INPUT
from pipelines.params import Augment, Train


class FusedBatchNorm(keras.layers.BatchNormalization):
    """Keras' BatchNormalization, trained with TensorFlow's fused kernel.

    Keras 3 computes a training-mode batch norm as ~ten elementwise ops (and their gradients), which
    were ~40% of a training step on 2 cores; the fused kernel is one op each way. Inference is
    Keras' own code, and what is saved or served is the plain layer (`plain`), so no model file
    needs this class.
    """

    def call(self, inputs, training=None, mask=None):
        if not (training and self.trainable) or mask is not None or self.renorm:
            return super().call(inputs, training=training, mask=mask)
        x = tf.cast(inputs, "float32")
        flat = x.shape.rank != 4
        if flat:  # after a Dense layer: (n, c) as (n, 1, 1, c), the layout the kernel takes
            x = tf.reshape(x, [-1, 1, 1, x.shape[-1]])
        y, mean, variance = tf.compat.v1.nn.fused_batch_norm(
            x, self.gamma, self.beta, epsilon=self.epsilon, is_training=True
        )
        n = tf.cast(tf.size(x) // x.shape[-1], "float32")
        variance = variance * (n - 1.0) / n  # the kernel's is Bessel-corrected; Keras' is not
        m = self.momentum
        self.moving_mean.assign(self.moving_mean * m + mean * (1.0 - m))
        self.moving_variance.assign(self.moving_variance * m + variance * (1.0 - m))
        if flat:
            y = tf.reshape(y, [-1, y.shape[-1]])
        return tf.cast(y, self.compute_dtype)


def _core_layers(cfg: Train, fused: bool = True) -> list[keras.layers.Layer]:
    """Scale; blocks of 3×3 convs, each closed by a 2×2 max-pool or 5×5 stride-2 conv; dense."""
    layers: list[keras.layers.Layer] = [keras.layers.Rescaling(1.0 / 255.0, name="scale")]
    norm = FusedBatchNorm if fused else keras.layers.BatchNormalization

    def conv(filters: int, size: int, stride: int, padding: str, name: str) -> None:
        layers.append(
            keras.layers.Conv2D(
                filters,
                size,
                strides=stride,
                padding=padding,
                use_bias=not cfg.batch_norm,
                name=name,
            )
        )
        if cfg.batch_norm:
            layers.append(norm(name=f"bn_{name}"))
        layers.append(keras.layers.Activation("relu", name=f"relu_{name}"))

    for b, filters in enumerate(cfg.conv_filters, start=1):
        for c in range(1, cfg.convs_per_block + 1):
            conv(filters, 3, 1, cfg.padding, f"conv{b}_{c}")
        if cfg.downsample == "pool":
            layers.append(keras.layers.MaxPooling2D(name=f"pool{b}"))
        else:
            conv(filters, 5, 2, "same", f"down{b}")
        if cfg.block_dropout:
            layers.append(keras.layers.Dropout(cfg.block_dropout, name=f"dropout_block{b}"))
    layers.append(keras.layers.Flatten(name="flatten"))
    if cfg.dense_units:
        layers.append(
            keras.layers.Dense(cfg.dense_units, use_bias=not cfg.batch_norm, name="dense")
        )
        if cfg.batch_norm:
            layers.append(norm(name="bn_dense"))
        layers.append(keras.layers.Activation("relu", name="relu_dense"))
    if cfg.dropout:
        layers.append(keras.layers.Dropout(cfg.dropout, name="dropout"))
    layers.append(keras.layers.Dense(10, activation="softmax", name="probabilities"))
    return layers


def augmentation(aug: Augment, seed: int) -> list[keras.layers.Layer]:
    """Keras' random preprocessing layers: active in fit(), identity at inference."""
    layers: list[keras.layers.Layer] = []
    if aug.rotation_degrees:
        layers.append(
            keras.layers.RandomRotation(
                aug.rotation_degrees / 360.0, fill_mode="constant", seed=seed, name="aug_rotate"
            )
        )
    if aug.zoom:
        layers.append(
            keras.layers.RandomZoom(aug.zoom, fill_mode="constant", seed=seed + 1, name="aug_zoom")
        )
    if aug.translation:
        layers.append(
            keras.layers.RandomTranslation(
                aug.translation,
                aug.translation,
                fill_mode="constant",
                seed=seed + 2,
                name="aug_translate",
            )
        )
    return layers


def build(cfg: Train, seed: int = 0, fused: bool = True) -> tuple[keras.Model, keras.Model]:
    """(served model, training model): the same weights, augmentation only in the second."""
    core = _core_layers(cfg, fused)
    served_in = keras.Input(shape=MODEL_INPUT, dtype="uint8", name="pixels")
    train_in = keras.Input(shape=MODEL_INPUT, dtype="uint8", name="pixels")
    x, t = served_in, keras.layers.Rescaling(1.0, name="as_float")(train_in)
    for layer in augmentation(cfg.augment, seed):
        t = layer(t)
    for layer in core:
        x, t = layer(x), layer(t)
    return keras.Model(served_in, x, name="digit_cnn"), keras.Model(train_in, t, name="trainer")


def plain(net: keras.Model, cfg: Train) -> keras.Model:
    """`net` with Keras' own BatchNormalization layers and the same weights: what gets saved."""
    copy, _ = build(cfg, fused=False)
    copy.set_weights(net.get_weights())
    return copy


def learning_rate(
    cfg: Train, steps_per_epoch: int
) -> float | keras.optimizers.schedules.LearningRateSchedule:
    """Constant, exponential decay per epoch, or cosine decay to zero; after a linear warm-up."""
    total, warmup = cfg.epochs * steps_per_epoch, cfg.warmup_epochs * steps_per_epoch
    if cfg.lr_schedule == "constant" and not warmup:
        return cfg.learning_rate
    if cfg.lr_schedule == "cosine":
        return keras.optimizers.schedules.CosineDecay(
            0.0 if warmup else cfg.learning_rate,
            total - warmup,
            warmup_target=cfg.learning_rate if warmup else None,
            warmup_steps=warmup,
        )
    return _WarmupExponential(
        cfg.learning_rate,
        warmup,
        steps_per_epoch,
        cfg.lr_decay if cfg.lr_schedule == "exponential" else 1.0,
    )


@keras.saving.register_keras_serializable(package="digit_mlops")
class _WarmupExponential(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up, then peak × decay^epoch (Deotte's 0.95 per epoch)."""

    def __init__(self, peak: float, warmup_steps: int, steps_per_epoch: int, decay: float):
        self.peak, self.warmup_steps = peak, warmup_steps
        self.steps_per_epoch, self.decay = steps_per_epoch, decay

    def __call__(self, step):
        step = keras.ops.cast(step, "float32")
        warm = self.peak * (step + 1.0) / max(self.warmup_steps, 1)
        epochs_after = keras.ops.floor((step - self.warmup_steps) / self.steps_per_epoch)
        decayed = self.peak * keras.ops.power(self.decay, keras.ops.maximum(epochs_after, 0.0))
        return keras.ops.where(step < self.warmup_steps, warm, decayed)

    def get_config(self) -> dict:
        return {
            "peak": self.peak,
            "warmup_steps": self.warmup_steps,
            "steps_per_epoch": self.steps_per_epoch,
            "decay": self.decay,
        }


def compile_for_training(trainer: keras.Model, cfg: Train, steps_per_epoch: int) -> None:
    trainer.compile(
        optimizer=keras.optimizers.Adam(
            learning_rate(cfg, steps_per_epoch), use_ema=cfg.ema, ema_momentum=cfg.ema_momentum
        ),
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=cfg.label_smoothing),
        metrics=["accuracy"],
    )


def forward_macs(model: keras.Model) -> int:
    """Multiply-adds of one image's forward pass through the conv and dense layers.

    BatchNorm, activations and pooling are left out: they are a rounding error beside the convs
    (and BatchNorm folds into the conv at inference).
    """
    total = 0
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D):
            _, h, w, c_out = layer.output.shape
            kh, kw = layer.kernel_size
            total += h * w * kh * kw * layer.input.shape[-1] * c_out
        elif isinstance(layer, keras.layers.Dense):
            total += layer.input.shape[-1] * layer.units
    return int(total)
