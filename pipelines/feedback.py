"""Stage 0, feedback: export what people told the page into DVC-tracked data.

Reads every labelled row of the feedback database (`DIGIT_FEEDBACK_DB`, the service's own switch;
unset: `feedback.db` at the repository root, which the service started by `make serve` writes)
and writes `data/feedback/feedback.npz`: the 28×28 images the model saw, the labels (a helper's
where one gave it), the digits the model answered with their confidence, the registry versions
and the times. The rows come in a fixed order and numpy writes fixed zip timestamps, so the same
database content gives the same bytes: the stage runs on every `dvc repro` (DVC cannot see into
a database), but prepare and training run again only when the feedback really changed.

No database yet (nobody sent feedback) exports an empty set; a database that cannot be read
fails the stage with the reason and leaves the previous export in place.
"""

from __future__ import annotations

import sys

import numpy as np

from common.feedback_store import FeedbackStore, empty, shown, url_from_env
from pipelines import layout
from pipelines.atomic import save_npz
from pipelines.log import fail, start
from pipelines.paths import repo_root, workspace


def export(url: str) -> dict[str, np.ndarray]:
    """The labelled rows of the database at `url` (empty when it is a SQLite file not made yet)."""
    store = FeedbackStore.existing(url)
    if store is None:
        return empty()
    try:
        return store.export()
    finally:
        store.close()


def main() -> None:
    start("feedback")
    url = url_from_env(repo_root())
    try:
        arrays = export(url)
    except Exception as err:  # SQLAlchemy's errors: a server down, a wrong password, a bad file
        fail("feedback", RuntimeError(f"cannot read the feedback database {shown(url)}: {err}"))
    save_npz(workspace() / layout.FEEDBACK, **arrays)
    n = len(arrays["y"])
    versions = sorted(set(arrays["model_version"].tolist()))
    print(
        f"feedback: {n} labelled rows from {shown(url)}"
        + (f" (answered by versions {', '.join(versions)})" if versions else "")
        + f" → {layout.FEEDBACK}",
        file=sys.stderr,
    )


if __name__ == "__main__":
    main()
