#!/usr/bin/env bash
# Measure the model on your own handwriting: a folder of pictures sorted into 0/ .. 9/.
#
#   examples/score_folder.sh my-digits/            # your folder
#   examples/score_folder.sh                       # 100 real MNIST test digits, made into PNGs
#
# Writes predictions.csv (one row per picture: digit, confidence, the ten probabilities, the label,
# whether it was right) and seen/ (the 28x28 the model saw in each), and prints the accuracy, the
# confusion table and the wrong answers it was surest of. Exit status 1 if a file gave no digit.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
export PATH="$here/../.venv/bin:$PATH"
out=${OUT:-predictions.csv}
folder=${1:-}
if [[ -z $folder ]]; then
  demo=$(mktemp -d)
  trap 'rm -rf "$demo"' EXIT
  folder=$demo/digits
  python - "$folder" "$here/../tests/fixtures/mnist-sample.npz" <<'PY'
import sys
from pathlib import Path

import numpy as np
from PIL import Image

folder, fixture = Path(sys.argv[1]), np.load(sys.argv[2])
for i, (x, y) in enumerate(zip(fixture["x_test"][:100], fixture["y_test"][:100])):
    (folder / str(y)).mkdir(parents=True, exist_ok=True)  # the folder names are the labels
    Image.fromarray(255 - x).resize((112, 112)).save(folder / str(y) / f"{i:03d}.png")
PY
fi
digit-mlops score "$folder" --labels --out "$out" --seen "${SEEN:-seen}" --worst 5
