"""The digit model for everyday use: in your own process, against a running service, on folders.

    import digits
    model = digits.load()                      # the packaged champion (BentoML store)
    model = digits.from_mlflow()               # or the registry's: models:/mnist-cnn@champion
    model.predict("my-digit.jpg")[0].digit     # arrays, PIL images, files, bytes, lists of them
    with digits.Client("http://127.0.0.1:3000") as client:
        client.predict_image("my-digit.jpg")   # every endpoint of a running service

`digit-mlops score PATH...` (digits/cli.py) scores folders; docs/cli.md has it all. Names are
imported when first used, so `import digits` stays cheap (no TensorFlow, no BentoML).
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "load": "digits.model",
    "from_mlflow": "digits.model",
    "Model": "digits.model",
    "Prediction": "digits.model",
    "Client": "digits.client",
    "Refused": "digits.client",
    "Unreadable": "digits.inputs",
    "walk": "digits.inputs",
    "score_files": "digits.score",
}
__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'digits' has no attribute {name!r}")
    return getattr(importlib.import_module(_WHERE[name]), name)
