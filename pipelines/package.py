"""Import the registry's champion into the BentoML model store (`make package`).

Run after `dvc repro`. The Bento model carries a model card (common/card.py): the MLflow version,
run id, test accuracy and per-digit recall, lineage, training params and the net's summary
(pipelines/architecture.py), so the service can say exactly what it serves without ever calling
MLflow; and, as `model-card.md` beside the model, the Markdown model card evaluate logged on the
run (`GET /model/card`). Importing the same champion again changes nothing.

The card also carries prepare's drift reference (`stats.json["drift_reference"]`, also written as
`reference.json` beside the model), but only when the workspace's prepared data is the data the
champion was trained on (its `data_hash` tag); otherwise the model is packaged without one and the
drift panels stay empty.

Not a DVC stage, on purpose: its input is the registry's `champion` alias, which moves without the
workspace changing (a teammate's promotion, a rollback), and its output is the BentoML store, which
lives outside the workspace; so DVC could neither tell when to rerun it nor keep its result. It is
cheap and idempotent, so `make package` simply runs it every time.

The registry's `challenger` is packaged too (when it is another version than the champion) and
named in a `challenger` file beside BentoML's `latest` (common/rollout.py), for the service's
shadow and canary. Every packaged model carries a probe: the first test digits (seeded noise when
the workspace has no prepared data) and the probabilities the registry's model gives them, which
the service checks before it serves the model.

A running service follows `:latest` (service/watcher.py): packaging a new champion, a rollback
and a promotion reach it within seconds, with no restart.

`:latest` (what the service loads) only ever moves to a complete champion: a new import is built in
a staging store beside the real one and moved in with one rename (pipelines/atomic.py), then
`:latest` is pinned to it with another; a champion already in the store (a rollback) is not
re-imported, `:latest` just moves back to it. Whatever fails half-way (a download, Ctrl-C), the
store and `:latest` stay as the last successful `make package` left them.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import bentoml
import mlflow
import numpy as np
from bentoml._internal.configuration.containers import BentoMLContainer
from bentoml._internal.models.model import ModelStore
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE, RESOURCE_DOES_NOT_EXIST, ErrorCode
from mlflow.tracking import MlflowClient

from common.card import ModelCard, RuntimeCheck
from common.drift import REFERENCE_KEY, DriftReference
from common.image import SHAPE
from common.rollout import PROBE_FILE, PROBE_IMAGES, pointer, read_pointer, save_probe
from common.runtimes import OPENVINO_DIR, RUNTIMES_FILE
from pipelines import layout, model_card
from pipelines import params as params_mod
from pipelines.atomic import replace_dir, write_text
from pipelines.data import load_split
from pipelines.openvino_export import OPENVINO_ARTIFACT
from pipelines.paths import tracking_uri, workspace
from pipelines.redact import redact, redact_tracebacks
from pipelines.tracking import data_hash

NOT_FOUND = {ErrorCode.Name(RESOURCE_DOES_NOT_EXIST), ErrorCode.Name(INVALID_PARAMETER_VALUE)}
MODEL_FILE = "model.keras"
REFERENCE_FILE = "reference.json"
MARKDOWN_FILE = "model-card.md"  # evaluate's Markdown model card, beside the model


def drift_reference(champion_data_hash: str) -> DriftReference | None:
    """prepare's drift reference if data/prepared is what the champion was trained on, else None."""
    stats_file = workspace() / layout.STATS
    try:
        ref = json.loads(stats_file.read_text()).get(REFERENCE_KEY)
        arrays = [a for split in layout.SPLITS for a in load_split(split)]
    except (OSError, ValueError) as exc:
        print(f"package: no drift reference ({exc})", file=sys.stderr)
        return None
    if ref is None:
        print(
            f"package: no drift reference: {stats_file} has no '{REFERENCE_KEY}' "
            "(rerun `dvc repro` to refresh prepare's outputs)",
            file=sys.stderr,
        )
        return None
    if data_hash(arrays) != champion_data_hash:
        print(
            "package: no drift reference: data/prepared is not the data the champion was "
            f"trained on (data_hash {champion_data_hash[:12]}...)",
            file=sys.stderr,
        )
        return None
    return DriftReference.model_validate(ref)


def probe_images() -> np.ndarray:
    """What every packaged model is checked on: the first test digits, or seeded noise."""
    try:
        return load_split("test")[0][:PROBE_IMAGES, ..., 0]
    except (OSError, ValueError, KeyError):
        rng = np.random.default_rng(0)
        return rng.integers(0, 256, (PROBE_IMAGES, *SHAPE), dtype=np.uint8)


def json_tag(tags: dict[str, str], key: str, default: list | dict) -> list | dict:
    """A lineage tag written as JSON (pipelines/tracking.py); `default` when absent or not JSON
    (a version registered before the tag existed)."""
    try:
        value = json.loads(tags[key])
    except (KeyError, ValueError):
        return default
    return value if isinstance(value, type(default)) else default


def started_at(millis: int | None) -> str:
    """MLflow's run start (ms since the epoch) as UTC ISO 8601."""
    if not millis:
        return ""
    return datetime.fromtimestamp(millis / 1000, UTC).isoformat(timespec="seconds")


def per_class_recall(metrics: dict[str, float]) -> dict[str, float]:
    """evaluate's `test_recall_digit_<d>` metrics as {"0": ..., "9": ...} (those it logged)."""
    keys = {str(d): f"test_recall_digit_{d}" for d in range(10)}
    return {d: metrics[key] for d, key in keys.items() if key in metrics}


def markdown_card(run_id: str, dst: Path) -> str | None:
    """The model card evaluate logged on the run, or None (a run evaluated before it was)."""
    try:
        path = mlflow.artifacts.download_artifacts(
            run_id=run_id, artifact_path=model_card.ARTIFACT, dst_path=str(dst)
        )
        return Path(path).read_text()
    except (MlflowException, OSError) as err:
        print(f"package: no model card on run {run_id} ({redact(str(err))})", file=sys.stderr)
        return None


def openvino_irs(run_id: str, dst: Path) -> tuple[Path | None, dict[str, RuntimeCheck]]:
    """The OpenVINO IRs evaluate logged on the run and its verdict on each runtime, or
    (None, {}) for a run evaluated before they existed (the service then serves Keras)."""
    try:
        folder = Path(
            mlflow.artifacts.download_artifacts(
                run_id=run_id, artifact_path=OPENVINO_ARTIFACT, dst_path=str(dst)
            )
        )
        checks = json.loads((folder / RUNTIMES_FILE).read_text())
        return folder, {name: RuntimeCheck.model_validate(c) for name, c in checks.items()}
    except (MlflowException, OSError, ValueError) as err:
        print(f"package: no OpenVINO IRs on run {run_id} ({redact(str(err))})", file=sys.stderr)
        return None, {}


def bento_tag(name: str, version: str, run_id: str) -> str:
    """One Bento tag per registry version *and* run: a rebuilt store reusing v1 gets a new tag."""
    return f"{name}:v{version}-{run_id[:8]}"


def challenger_version(client: MlflowClient, name: str) -> ModelVersion | None:
    """The registry's `name@challenger`, or None."""
    try:
        return client.get_model_version_by_alias(name, "challenger")
    except MlflowException as err:
        if err.error_code in NOT_FOUND:
            return None
        raise


def champion_version(client: MlflowClient, name: str) -> ModelVersion:
    """The registry's `name@champion`; a clear exit if there is none or the store is unreachable."""
    try:
        return client.get_model_version_by_alias(name, "champion")
    except MlflowException as err:
        where = redact(tracking_uri())
        # no such model, or no such alias; anything else (unreachable, refused) is said as is
        if err.error_code in NOT_FOUND:
            raise SystemExit(
                f"package: the registry at {where} has no '{name}@champion' yet. Run `dvc repro` "
                "first (a model becomes champion when it passes register.min_accuracy)."
            ) from None
        raise SystemExit(
            f"package: cannot read the registry at {where}: {redact(str(err))}"
        ) from None


def in_store(tag: str) -> bentoml.Model | None:
    try:
        return bentoml.models.get(tag)
    except bentoml.exceptions.NotFound:
        return None


def latest_tag(name: str) -> str | None:
    """The tag `name:latest` resolves to, as the service will resolve it."""
    model = in_store(f"{name}:latest")
    return str(model.tag) if model is not None else None


def pin_latest(model: bentoml.Model) -> None:
    """Point `<name>:latest` at `model` with one atomic rename of BentoML's own `latest` file."""
    write_text(Path(model.path).parent / "latest", model.tag.version)


def import_champion(
    client: MlflowClient, name: str, mv: ModelVersion, tag: str, reference: DriftReference | None
) -> bentoml.Model:
    """Build the Bento model in a staging store on the same disk, then move it into the store in
    one step: the store never holds half of it, even after Ctrl-C."""
    import keras  # heavy; only needed when there is something to import

    from pipelines.architecture import summary

    store_root = Path(BentoMLContainer.model_store.get()._path)
    store_root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".package-", dir=store_root.parent) as tmp:
        local = mlflow.artifacts.download_artifacts(
            f"models:/{name}/{mv.version}", dst_path=str(Path(tmp) / "download")
        )
        net = mlflow.keras.load_model(local)
        probe = probe_images()
        answers = np.asarray(net(probe[..., None], training=False))
        run = client.get_run(mv.run_id)
        markdown = markdown_card(mv.run_id, Path(tmp) / "card")
        irs, checks = openvino_irs(mv.run_id, Path(tmp) / "openvino")
        card = ModelCard(
            registered_model=name,
            mlflow_version=str(mv.version),
            run_id=mv.run_id,
            source=f"models:/{name}/{mv.version}",
            test_accuracy=float(mv.tags.get("test_accuracy", "nan")),
            ece=run.data.metrics.get("test_ece"),
            train_wall_time_s=run.data.metrics.get("train_wall_time_s"),
            train_compute_macs=run.data.metrics.get("train_compute_macs"),
            git_commit=mv.tags.get("git_commit", "unknown"),
            git_dirty_files=json_tag(mv.tags, "git_dirty_files", []),
            params_hash=mv.tags.get("params_hash", "unknown"),
            data_hash=mv.tags.get("data_hash", "unknown"),
            data_md5=json_tag(mv.tags, "data_md5", {}),
            trained_at=started_at(run.info.start_time),
            params={k: v for k, v in sorted(run.data.params.items()) if k.startswith("train.")},
            drift_reference=reference,
            architecture=summary(net),
            per_class_recall=per_class_recall(run.data.metrics),
            markdown=MARKDOWN_FILE if markdown is not None else "",
            runtimes=checks,
        )
        staging = ModelStore(Path(tmp) / "store")
        with bentoml.models.create(
            tag,
            module="keras",
            metadata=card.to_metadata(),
            labels={"registry_version": str(mv.version)},
            _model_store=staging,
        ) as bento_model:
            keras.saving.save_model(net, Path(bento_model.path) / MODEL_FILE)
            save_probe(Path(bento_model.path) / PROBE_FILE, probe, answers)
            if reference is not None:
                (Path(bento_model.path) / REFERENCE_FILE).write_text(reference.model_dump_json())
            if markdown is not None:
                (Path(bento_model.path) / MARKDOWN_FILE).write_text(markdown)
            if irs is not None:
                shutil.copytree(irs, Path(bento_model.path) / OPENVINO_DIR)
        staged = Path(staging.get(tag).path)
        final = store_root / staged.parent.name / staged.name
        final.parent.mkdir(parents=True, exist_ok=True)
        replace_dir(staged, final)  # the old copy (if re-importing) goes only once this is in
    return bentoml.models.get(tag)


def package(name: str) -> bentoml.Model:
    """Package the champion (and the challenger beside it); return the champion's Bento model."""
    mlflow.set_tracking_uri(tracking_uri())
    client = MlflowClient()
    mv = champion_version(client, name)
    champion = package_champion(client, name, mv)
    package_challenger(client, name, mv, champion)
    return champion


def package_challenger(
    client: MlflowClient, name: str, champion_mv: ModelVersion, champion: bentoml.Model
) -> None:
    """Import the registry's challenger if it is another version, and name it in the pointer
    (the champion's own tag when they are the same version: nothing to compare)."""
    mv = challenger_version(client, name)
    if mv is None or mv.version == champion_mv.version:
        chosen = champion
    else:
        tag = bento_tag(name, mv.version, mv.run_id)
        chosen = in_store(tag) or import_champion(client, name, mv, tag, None)
    if read_pointer(Path(champion.path)) != chosen.tag.version:
        write_text(pointer(Path(champion.path)), chosen.tag.version)
        print(f"package: challenger is {chosen.tag}", file=sys.stderr)


def package_champion(client: MlflowClient, name: str, mv: ModelVersion) -> bentoml.Model:
    tag = bento_tag(name, mv.version, mv.run_id)
    reference = drift_reference(mv.tags.get("data_hash", "unknown"))
    model = in_store(tag)
    if model is not None and (reference is None or REFERENCE_KEY in model.info.metadata):
        if latest_tag(name) == tag:
            print(
                f"package: {tag} is already the latest {name} in the BentoML store", file=sys.stderr
            )
        else:  # a rollback: the champion came back, and its copy is still in the store
            pin_latest(model)
            print(
                f"package: {name}:latest points at {tag} again (already in the store)",
                file=sys.stderr,
            )
        return model
    if model is not None:
        print(f"package: re-importing {tag} to add the drift reference", file=sys.stderr)
    model = import_champion(client, name, mv, tag, reference)
    pin_latest(model)
    with_ref = "with" if reference is not None else "without"
    print(
        f"package: imported {name} v{mv.version} (run {mv.run_id}) as {tag}, "
        f"{with_ref} a drift reference",
        file=sys.stderr,
    )
    return model


def main() -> None:
    redact_tracebacks()
    package(params_mod.load().register.model_name)


if __name__ == "__main__":
    main()
