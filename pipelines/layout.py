"""Every file the DAG passes from stage to stage, named once (dvc.yaml spells the same paths).

Paths are relative to the stage's workspace (`pipelines.paths.workspace()`). Stages import these
names instead of importing each other, and tests/code/test_structure.py checks that each one is an
output or a dependency in dvc.yaml.
"""

from __future__ import annotations

from pathlib import Path

# fetch
RAW = Path("data/raw/mnist.npz")
# feedback: what people told the page, exported from the feedback database
FEEDBACK = Path("data/feedback/feedback.npz")
# prepare
PREPARED = Path("data/prepared")
SPLITS = ("train", "val", "test")
STATS = PREPARED / "stats.json"
FEEDBACK_TRAIN = PREPARED / "feedback_train.npz"  # the feedback share that trains
PEOPLE = PREPARED / "people.npz"  # the held-out feedback: the "people" evaluation set
# train
MODEL = Path("models/model.keras")
RUN_INFO = Path("models/mlflow_run.json")
TRAIN_METRICS = Path("metrics/train.json")
HISTORY = Path("plots/train/history.csv")
# evaluate
LOGGED_MODEL = Path("models/logged_model.json")
SAVED_MODEL = Path("models/export/saved_model")
TFLITE = Path("models/export/model.tflite")
OPENVINO = Path("models/export/openvino")  # fp32/ and int8/ IRs, runtimes.json
EVAL_METRICS = Path("metrics/eval.json")
CONFUSION = Path("plots/confusion.csv")
RELIABILITY = Path("plots/reliability.csv")
GALLERY = Path("plots/misclassified.png")
MODEL_CARD = Path("docs/model-card.md")  # generated from the metrics: never edited by hand
# register
RECEIPT = Path("reports/register.json")


def split(name: str) -> Path:
    """The prepared split `name` (train, val or test)."""
    if name not in SPLITS:
        raise ValueError(f"no split {name!r}; one of {SPLITS}")
    return PREPARED / f"{name}.npz"
