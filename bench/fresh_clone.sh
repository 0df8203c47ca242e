#!/bin/bash
# Fresh clone to its first served prediction, with the team's stores up and a champion in them
# (docs/team.md#a-fresh-clone-to-its-first-answer). Nothing trains: the clone pulls, packages and
# serves. Usage, from a clone whose outputs were pushed (`make publish`):
#   MLFLOW_TRACKING_URI=http://127.0.0.1:5001 bench/fresh_clone.sh [REPO] [DEST] [PORT]
set -euo pipefail
: "${MLFLOW_TRACKING_URI:?point it at the tracking server of make stores}"
REPO=${1:-$(git rev-parse --show-toplevel)}
DEST=${2:-$(mktemp -d)/digit-mlops}
PORT=${3:-3917}
unset BENTOML_HOME VIRTUAL_ENV
now() { date +%s.%N; }
marks=("$(now)")
git clone -q "$REPO" "$DEST" && cd "$DEST"
marks+=("$(now)")
make venv > venv.log 2>&1
marks+=("$(now)")
make pull > pull.log 2>&1
marks+=("$(now)")
make package > package.log 2>&1
marks+=("$(now)")
setsid make serve PORT="$PORT" > serve.log 2>&1 &
server=$!
trap 'kill -- -$server 2>/dev/null || true' EXIT
until curl -sf -o /dev/null "http://127.0.0.1:$PORT/readyz"; do sleep 0.2; done
marks+=("$(now)")
answer=$(curl -sf -X POST -H 'Content-Type: application/json' \
  --data @examples/digit-7.json "http://127.0.0.1:$PORT/predict")
marks+=("$(now)")
.venv/bin/dvc repro | tail -1  # "Data and pipelines are up to date." when nothing trains
python3 - "${marks[@]}" <<'PY'
import sys
t = list(map(float, sys.argv[1:]))
steps = ["git clone", "make venv", "make pull", "make package", "make serve (to /readyz)",
         "first POST /predict"]
for name, a, b in zip(steps, t, t[1:]):
    print(f"| {name} | {b - a:.1f} |")
print(f"| total | {t[-1] - t[0]:.1f} |")
PY
echo "answer: $answer"
lscpu | grep -E "^Model name|^CPU\(s\)"
