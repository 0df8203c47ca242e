"""The true digits of scored files, for `--labels`: from the data itself or from a CSV.

The data's own labels (a parent folder `0`..`9`, IDX1 beside IDX3, `y_*` beside `x_*` in an
`.npz`) come with each `Item` (digits/inputs.py). A CSV (columns `file,label`, a header row)
names files relative to the CSV's own folder, or absolute; an image inside an array file is named
as the output names it: `digits.npy[3]`, `mnist.npz:x_test[3]`.
"""

from __future__ import annotations

import csv
import os
import re
from collections.abc import Callable
from pathlib import Path

from digits.inputs import Item

_PART = re.compile(r"^(?P<path>.+?)(?P<part>(?::[^:\[\]]+)?(?:\[\d+\])?)$")


class LabelsError(ValueError):
    """A labels CSV that cannot be used (missing columns, a label that is not a digit)."""


def _key(path: Path | str, part: str) -> str:
    return f"{os.path.realpath(path)}{part}"


def read_csv(path: Path) -> dict[str, int]:
    """file → label from a CSV with a `file` and a `label` column (any order, any case)."""
    folder = path.parent
    labels = {}
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        columns = {name.strip().lower(): name for name in reader.fieldnames or []}
        if not {"file", "label"} <= columns.keys():
            raise LabelsError(f"{path}: needs a header row with `file` and `label` columns")
        for line, row in enumerate(reader, start=2):
            name, label = ((row[columns[c]] or "").strip() for c in ("file", "label"))
            if not name:
                continue
            if label not in {str(d) for d in range(10)}:
                raise LabelsError(f"{path}:{line}: label {label!r} is not a digit 0-9")
            match = _PART.match(name)
            labels[_key(folder / match["path"], match["part"])] = int(label)
    return labels


def labeller(csv_path: Path | None) -> Callable[[Item], int | None]:
    """Item → its label: the CSV's when one is given (files it does not name have none), else
    the data's own."""
    if csv_path is None:
        return lambda item: item.label
    labels = read_csv(csv_path)
    return lambda item: labels.get(_key(item.path, item.part))
