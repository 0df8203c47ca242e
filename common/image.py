"""The image format every path agrees on: MNIST's 28×28 uint8 field, bright ink on black.

The model takes exactly this (scaling lives inside it), the pipeline stores its splits in it, and
the service turns every request into it. The two ink levels measure different things, so each is
named for what it measures; both are part of recorded results (drift references, evaluation
slices), so changing one changes those results.
"""

from __future__ import annotations

import numpy as np

SIDE = 28  # the MNIST field: SIDE × SIDE pixels
SHAPE = (SIDE, SIDE)
MODEL_INPUT = (SIDE, SIDE, 1)  # what the Keras model takes per image (a channel axis of 1)

# A pixel brighter than this (about 10 % intensity) counts towards the ink's box: drift monitoring
# measures how large a digit is drawn, faint anti-aliased edges included.
BOX_LEVEL = 25
# A pixel brighter than half intensity is the body of a stroke: the evaluation's thin/thick and
# small/large slices count these.
STROKE_LEVEL = 127


def planes(images: np.ndarray) -> np.ndarray:
    """(n, 28, 28) from (n, 28, 28) or (n, 28, 28, 1)."""
    return images.reshape(images.shape[0], images.shape[1], images.shape[2])


def extent(on: np.ndarray) -> np.ndarray:
    """(n, L) bools -> last - first + 1 of the True positions per row; 0 where none is True.

    Of `ink.any(axis=2)` it is each image's ink height, of `ink.any(axis=1)` its width.
    """
    first = np.argmax(on, axis=1)
    last = on.shape[1] - 1 - np.argmax(on[:, ::-1], axis=1)
    return np.where(on.any(axis=1), last - first + 1, 0)
