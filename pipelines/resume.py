"""Resumable training: the training state after every epoch, kept outside DVC's outputs.

A run stopped at epoch 30 of 40 (Ctrl-C, a crash, a reboot) is rerun by the next `dvc repro`; with
this it continues after the last completed epoch instead of starting over, and ends with the very
weights an uninterrupted run would have (bit for bit): the backup holds the weights, the
optimiser (moments, EMA, step count, hence the learning-rate schedule), the random generators of
dropout and augmentation, early stopping's bookkeeping, the history so far and the MLflow run id,
and each epoch's shuffle is a function of the epoch alone (`train.epochs_dataset`).

The backup lives in `.resume/train-<key>/` of the workspace (gitignored and dvcignored, so DVC never
deletes or tracks it). The key hashes everything that shapes training: seed, train and mlflow
params, the prepared data, the source of every project module loaded and the library versions; a
backup under any other key is deleted, never resumed. A successful run removes it.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np

from pipelines.atomic import atomic_path, save_npz, write_json

BACKUP_ROOT = Path(".resume")
META = "meta.json"
HISTORY = "history.csv"
_SEED_STATE = "seed_generator_state"  # Keras keeps these out of save_weights()


def loaded_sources() -> list[Path]:
    """The files of every loaded module of this project (`pipelines/`, `common/`, the running
    stage too): exactly the code this training runs."""
    root = Path(__file__).resolve().parent.parent
    files = set()
    for module in list(sys.modules.values()):
        path = Path(getattr(module, "__file__", None) or "/").resolve()
        in_project = path.parent.parent == root and path.parent.name in ("pipelines", "common")
        if in_project and path.suffix == ".py":
            files.add(path)
    return sorted(files)


def code_fingerprint() -> str:
    """sha256 over the name and source of every file `loaded_sources` lists."""
    h = hashlib.sha256()
    for path in loaded_sources():
        h.update(f"{path.parent.name}/{path.name}\0".encode() + path.read_bytes() + b"\0")
    return h.hexdigest()


def key(**parts: Any) -> str:
    """A stable hash of the JSON-able `parts` (params, data hash, code, versions)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


@dataclass(frozen=True)
class Saved:
    """What the last completed epoch left: `epoch` epochs done, in MLflow run `run_id`."""

    folder: Path
    epoch: int
    run_id: str
    wall_time_s: float
    stopped: bool
    early_stopping: dict[str, Any] | None


class Backup:
    """One training's backup folder, chosen by its key."""

    def __init__(self, workspace: Path, key: str) -> None:
        self.root = workspace / BACKUP_ROOT
        self.folder = self.root / f"train-{key[:24]}"
        self.history = self.folder / HISTORY

    def load(self) -> Saved | None:
        """The saved state for this key, or None; backups under other keys are deleted."""
        if self.root.is_dir():
            for other in self.root.glob("train-*"):
                if other != self.folder:
                    shutil.rmtree(other, ignore_errors=True)
        try:
            meta = json.loads((self.folder / META).read_text())
        except (OSError, ValueError):
            self.discard()
            return None
        return Saved(
            self.folder,
            meta["epoch"],
            meta["run_id"],
            meta["wall_time_s"],
            meta["stopped"],
            meta["early_stopping"],
        )

    def start(self) -> None:
        """A fresh backup folder, for a run that starts at epoch 0."""
        self.discard()
        self.folder.mkdir(parents=True)

    def discard(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)
        if self.root.is_dir() and not any(self.root.iterdir()):
            self.root.rmdir()


def seed_states(model: keras.Model) -> list[keras.Variable]:
    return [v for v in model.variables if v.path.endswith(_SEED_STATE)]


def restore(trainer: keras.Model, saved: Saved) -> None:
    """Put the weights, the optimiser and the random generators back as the epoch left them, and
    drop history rows of an epoch that was not backed up."""
    trainer.optimizer.build(trainer.trainable_variables)  # or load_weights skips the optimiser
    trainer.load_weights(saved.folder / f"epoch-{saved.epoch}.weights.h5")
    with np.load(saved.folder / f"epoch-{saved.epoch}.extra.npz") as extra:
        for v in seed_states(trainer):
            v.assign(extra[f"seed:{v.path}"])
    history = saved.folder / HISTORY
    rows = history.read_text().splitlines(keepends=True) if history.is_file() else []
    kept = rows[:1] + [r for r in rows[1:] if int(r.split(",", 1)[0]) < saved.epoch]
    history.write_text("".join(kept))


class EpochBackup(keras.callbacks.Callback):
    """Saves the state after every epoch (last in the callback list, after early stopping and
    the history logger); on a resumed run, gives early stopping its bookkeeping back."""

    def __init__(
        self,
        backup: Backup,
        run_id: str,
        wall_offset_s: float,
        clock: Any,
        early_stopping: keras.callbacks.EarlyStopping | None,
        saved: Saved | None,
    ) -> None:
        super().__init__()
        self.backup, self.run_id = backup, run_id
        self.wall_offset_s, self.clock, self.started = wall_offset_s, clock, clock()
        self.early_stopping, self.saved = early_stopping, saved

    def on_train_begin(self, logs: dict | None = None) -> None:
        es, saved = self.early_stopping, self.saved
        if es is None or saved is None or saved.early_stopping is None:
            return
        state = saved.early_stopping  # early stopping's own on_train_begin has just reset it
        es.wait, es.best, es.best_epoch = state["wait"], state["best"], state["best_epoch"]
        es.stopped_epoch = state["stopped_epoch"]
        if state["best_weights"]:
            with np.load(saved.folder / f"epoch-{saved.epoch}.extra.npz") as extra:
                es.best_weights = [extra[f"best:{i}"] for i in range(state["best_weights"])]

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        done, folder = epoch + 1, self.backup.folder
        with atomic_path(folder / f"epoch-{done}.weights.h5") as tmp:
            self.model.save_weights(tmp)
        extra = {f"seed:{v.path}": np.asarray(v.numpy()) for v in seed_states(self.model)}
        es_state = None
        es = self.early_stopping
        if es is not None:
            best_weights = es.best_weights or []
            extra |= {f"best:{i}": np.asarray(w) for i, w in enumerate(best_weights)}
            es_state = {
                "wait": es.wait,
                "best": None if es.best is None else float(es.best),
                "best_epoch": es.best_epoch,
                "stopped_epoch": es.stopped_epoch,
                "best_weights": len(best_weights),
            }
        save_npz(folder / f"epoch-{done}.extra.npz", **extra)
        meta = {
            "epoch": done,
            "run_id": self.run_id,
            "wall_time_s": self.wall_offset_s + self.clock() - self.started,
            "stopped": bool(self.model.stop_training),
            "early_stopping": es_state,
        }
        write_json(folder / META, meta)  # the commit point: this epoch is now the one resumed
        for old in folder.glob("epoch-*"):
            if not old.name.startswith(f"epoch-{done}."):
                old.unlink(missing_ok=True)
