"""The champion in your own process: an array, a PIL image and a file, no server needed.

    .venv/bin/python examples/predict_in_process.py

`digits.load()` takes `mnist-cnn:latest` from the BentoML store (`make package` puts the champion
there; BENTOML_HOME, default the project's `.bentoml/`) with the service's own loader, so it answers
as the service does. Arrays are MNIST pixels (white ink on black, as `/predict` takes them);
pictures are made MNIST-like first (as `/predict_image` does).
"""

import json
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

import digits

# a real MNIST test digit: 28 rows of 28 pixels, 0-255
pixels = np.array(json.loads((Path(__file__).parent / "digit-7.json").read_text())["image"])
model = digits.load()
print(f"loaded {model.name} (registry version {model.version})")

[answer] = model.predict(pixels.astype(np.uint8))
print(f"array: digit {answer.digit}, confidence {answer.confidence:.6f}")

# the same digit as a person would photograph it: dark ink on white paper, 280×280
picture = Image.fromarray(255 - pixels.astype(np.uint8)).resize((280, 280))
[answer] = model.predict(picture)
print(f"PIL image: digit {answer.digit}, confidence {answer.confidence:.6f}")

with tempfile.TemporaryDirectory() as folder:
    path = Path(folder) / "my-digit.png"
    picture.save(path)
    [answer] = model.predict(path)  # also .jpg, .webp, .npy, .npz, IDX files...
    print(f"file: digit {answer.digit}, confidence {answer.confidence:.6f}")
    print("the 28x28 it saw, ink as #:")
    for row in answer.seen[4:24]:
        print("  " + "".join("#" if v > 127 else "." for v in row[4:24]))
