"""Why the model answered what it did: feature maps and a Grad-CAM heat-map for one 28×28 image.

A pure function of the Keras model and one uint8 image (white ink on black, as the service's `seen`
field gives it), used by the service's `/explain` endpoint and the web page. The served model is a
chain of layers (Rescaling, convs, pools, dense), so it is walked layer by layer once under a
`tf.GradientTape`: the outputs of the first convolution layers are kept as feature maps, the last
one's gradient gives Grad-CAM (Selvaraju et al. 2017) and the input's gradient a saliency map.
Convolutions are found by type (`keras.layers.Conv2D`), never by name. Every map comes back as
rows of ints 0-255, small enough to send as JSON and draw on a canvas.
"""

from __future__ import annotations

import numpy as np

from common.image import SIDE
from service.schemas import MAX_CHANNELS, Explanation, FeatureMaps

FEATURE_LAYERS = 2  # how many convolution layers to show, from the input side


def to_byte(values: np.ndarray) -> np.ndarray:
    """Scale non-negative values so the largest is 255 (all zero stays zero) → uint8."""
    values = np.maximum(np.nan_to_num(values.astype(np.float64)), 0.0)
    top = values.max()
    if top <= 0:
        return np.zeros(values.shape, np.uint8)
    return np.floor(values / top * 255.0 + 0.5).astype(np.uint8)


def resize(grid: np.ndarray, side: int = SIDE) -> np.ndarray:
    """A (h, w) map → (side, side), bilinear, edges aligned like the pixels they cover."""
    h, w = grid.shape
    if (h, w) == (side, side):
        return grid.astype(np.float64)

    def axis(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        pos = np.clip((np.arange(side) + 0.5) * n / side - 0.5, 0, n - 1)
        low = np.floor(pos).astype(int)
        return low, np.minimum(low + 1, n - 1), pos - low

    r0, r1, fr = axis(h)
    c0, c1, fc = axis(w)
    top = grid[r0][:, c0] * (1 - fc) + grid[r0][:, c1] * fc
    bottom = grid[r1][:, c0] * (1 - fc) + grid[r1][:, c1] * fc
    return top * (1 - fr[:, None]) + bottom * fr[:, None]


def _shrink(channel: np.ndarray, side: int = SIDE) -> np.ndarray:
    """Average-pool a map larger than side×side down to at most that (no-op for small maps)."""
    step = max(1, -(-max(channel.shape) // side))
    if step == 1:
        return channel
    h, w = (channel.shape[0] // step) * step, (channel.shape[1] // step) * step
    return channel[:h, :w].reshape(h // step, step, w // step, step).mean(axis=(1, 3))


def explain(model, image: np.ndarray) -> Explanation:
    """Keras model taking uint8 (n, 28, 28, 1) + one uint8 (28, 28) image → its explanation.

    Raises ValueError when the model has no convolution layer or is not a single chain.
    """
    import keras
    import tensorflow as tf

    layers = [layer for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)]
    convs = [layer for layer in layers if isinstance(layer, keras.layers.Conv2D)]
    if not convs:
        raise ValueError("the model has no Conv2D layer to explain")
    shown, last = convs[:FEATURE_LAYERS], convs[-1]
    # Floats in (the Rescaling layer inside takes them as it takes uint8), so the tape can follow
    # the gradient back to the pixels.
    x = tf.constant(np.asarray(image, np.float32).reshape(1, SIDE, SIDE, 1))
    outputs: dict[str, tf.Tensor] = {}
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        h = x
        for layer in layers:
            h = layer(h, training=False)
            if layer in shown or layer is last:
                outputs[layer.name] = h
        probs = h[0]
        digit = int(tf.argmax(probs))
        score = probs[digit]
    grads_last = tape.gradient(score, outputs[last.name])
    grads_input = tape.gradient(score, x)
    del tape
    if grads_last is None or grads_input is None:
        raise ValueError("the model is not a single chain of layers from its input")

    # Grad-CAM: weight each channel of the last conv layer by its mean gradient, keep the positive.
    act, grad = outputs[last.name][0].numpy(), grads_last[0].numpy()
    cam = np.maximum((act * grad.mean(axis=(0, 1))).sum(axis=-1), 0.0)
    gradcam = to_byte(resize(cam))
    saliency = to_byte(np.abs(grads_input[0, :, :, 0].numpy()))

    features = []
    for layer in shown:
        maps = np.maximum(
            outputs[layer.name][0].numpy(), 0.0
        )  # the positive part (what a ReLU passes)
        channels = maps.shape[-1]
        features.append(
            FeatureMaps(
                layer=layer.name,
                channels=int(channels),
                maps=[
                    to_byte(_shrink(maps[:, :, c])).tolist()
                    for c in range(min(channels, MAX_CHANNELS))
                ],
            )
        )
    return Explanation(
        digit=digit,
        probabilities=[round(float(p), 6) for p in probs.numpy()],
        features=features,
        gradcam=gradcam.tolist(),
        saliency=saliency.tolist(),
    )
