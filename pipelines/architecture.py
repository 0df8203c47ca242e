"""The served net in brief: its layers, parameters and multiply-adds per image.

One summary for the two places that describe the model, so they cannot disagree: the Markdown
model card `evaluate` renders and the card `package` writes for the service (`GET /model`).
"""

from __future__ import annotations

import keras

from common.card import Architecture, Layer
from pipelines.model import forward_macs


def _shape(shape: tuple) -> list[int | None]:
    return [None if d is None else int(d) for d in shape[1:]]  # without the batch axis


def summary(net: keras.Model) -> Architecture:
    """Every layer after the input (name, class, output shape, weights), the total weights and
    `forward_macs`; the net must be built (a loaded model is)."""
    layers = [
        Layer(
            name=layer.name,
            kind=type(layer).__name__,
            output_shape=_shape(layer.output.shape),
            parameters=layer.count_params(),
        )
        for layer in net.layers
        if not isinstance(layer, keras.layers.InputLayer)
    ]
    return Architecture(
        input_shape=_shape(net.input.shape),
        layers=layers,
        parameters=net.count_params(),
        multiply_adds=forward_macs(net),
    )
