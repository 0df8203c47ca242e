"""The CNN, built from params.yaml. It takes raw uint8 pixels: scaling lives inside the model,
so training, evaluation and every serving path feed it the same thing."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TF's C++ start-up chatter out of logs

import keras

from pipelines.params import Train

INPUT_SHAPE = (28, 28, 1)


def build(cfg: Train, steps_per_epoch: int) -> keras.Model:
    """Blocks of Conv3×3 (+BatchNorm) then MaxPool, then Dense + Dropout, softmax over 10."""
    inputs = keras.Input(shape=INPUT_SHAPE, dtype="uint8", name="pixels")
    x = keras.layers.Rescaling(1.0 / 255.0, name="scale")(inputs)
    for b, filters in enumerate(cfg.conv_filters, start=1):
        for c in range(1, cfg.convs_per_block + 1):
            x = keras.layers.Conv2D(
                filters, 3, padding="same", use_bias=not cfg.batch_norm, name=f"conv{b}_{c}"
            )(x)
            if cfg.batch_norm:
                x = keras.layers.BatchNormalization(name=f"bn{b}_{c}")(x)
            x = keras.layers.Activation("relu", name=f"relu{b}_{c}")(x)
        x = keras.layers.MaxPooling2D(name=f"pool{b}")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    x = keras.layers.Dropout(cfg.dropout, name="dropout1")(x)
    x = keras.layers.Dense(cfg.dense_units, activation="relu", name="dense")(x)
    x = keras.layers.Dropout(cfg.dropout, name="dropout2")(x)
    outputs = keras.layers.Dense(10, activation="softmax", name="probabilities")(x)
    model = keras.Model(inputs, outputs, name="digit_cnn")
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate(cfg, steps_per_epoch)),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    return model


def learning_rate(
    cfg: Train, steps_per_epoch: int
) -> float | keras.optimizers.schedules.LearningRateSchedule:
    """Constant, or cosine decay to zero over the whole run (a cheap, reliable final-epoch gain)."""
    if cfg.lr_schedule == "constant":
        return cfg.learning_rate
    return keras.optimizers.schedules.CosineDecay(cfg.learning_rate, cfg.epochs * steps_per_epoch)
