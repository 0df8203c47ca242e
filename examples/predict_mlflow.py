"""The registry's champion straight from MLflow, no BentoML: what any MLflow user would write.

    .venv/bin/python examples/predict_mlflow.py

MLFLOW_TRACKING_URI names the store (`make` uses sqlite:///$PWD/mlflow.db, MLflow's own default
when run from the project folder). The logged model's signature takes uint8 (n, 28, 28, 1): raw
pixels, white ink on black; the scaling is inside the model. `digits.from_mlflow()` does the same
and answers like `digits.load()`.
"""

import json
from pathlib import Path

import mlflow
import numpy as np

URI = "models:/mnist-cnn@champion"

pixels = np.array(json.loads((Path(__file__).parent / "digit-7.json").read_text())["image"])
model = mlflow.pyfunc.load_model(URI)
print(f"{URI} takes {model.metadata.get_input_schema()}")

probabilities = model.predict(pixels.astype(np.uint8)[None, :, :, None])[0]
digit = int(np.argmax(probabilities))
print(f"mlflow: digit {digit}, confidence {probabilities[digit]:.6f}")
