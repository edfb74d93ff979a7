# Two commands do all set-up on a fresh machine:
#   make run   - params.yaml checked, then the whole DVC pipeline (vireid repro = dvc repro register) on
#                the embedded default (synthetic data, local Ray, local MLflow):
#                synth -> prepare -> train -> evaluate -> register (the tune stage is opt-in: make tune)
#   make test  - the test suite
# Both bootstrap uv when it is missing and install the locked environment first.

SHELL := /bin/bash
UV = $(shell command -v uv 2>/dev/null || echo python3 -m uv)

export MLFLOW_DISABLE_TELEMETRY := true
export DVC_NO_ANALYTICS := 1
export RAY_USAGE_STATS_ENABLED := 0
export PYTHONUNBUFFERED := 1
# Ray 2.60 would ship the whole working tree to every worker and start workers through
# `uv run` when the driver runs under `uv run`: keep the workers in this environment.
export RAY_ENABLE_UV_RUN_RUNTIME_ENV := 0

.PHONY: setup run test test-long lint tune bench clean

# --compile-bytecode: the .pyc files are written once at install (about 1 min, 2 s when
# present). Where PYTHONDONTWRITEBYTECODE is set (this machine's shells) no process writes
# them, and every Ray worker and stage process compiled torch, sympy and Ray from source at
# each start (docs/benchmarks.md, "Python start-up").
setup:
	@command -v uv >/dev/null 2>&1 || python3 -m uv --version >/dev/null 2>&1 || python3 -m pip install --quiet uv
	@$(UV) sync --frozen --quiet --compile-bytecode

run: setup
	@git rev-parse --git-dir >/dev/null 2>&1 || (git init -q && echo "initialised a git repository (DVC needs one)")
	$(UV) run --frozen vireid repro
	@$(UV) run --frozen python -m pipelines.summary

# Two pytest workers: the tests that start Ray (marked xdist_group("ray")) run one after another
# on one of them, sharing one local Ray instance and one S3 server (tests/conftest.py); the other
# takes the remaining tests one by one as it frees up. tests/conftest.py also sets the variables
# exported here, so a test file run alone (uv run pytest tests/...) behaves the same.
# The tests marked long (over 5 minutes each: the tune stage's node loss and killed driver on a
# two-node cluster) are left to make test-long, to keep make test near 20 minutes. --durations
# prints the 25 slowest tests (setup and call), where the suite's time goes.
test: setup
	$(UV) run --frozen ruff check .
	$(UV) run --frozen pytest -q -n 2 --dist loadgroup -m "not long" --durations=25

test-long: setup
	$(UV) run --frozen pytest -q -m long

lint: setup
	$(UV) run --frozen ruff check . && $(UV) run --frozen ruff format --check .

tune: setup
	$(UV) run --frozen vireid repro tune

bench: setup
	$(UV) run --frozen python bench/run_all.py

clean:
	rm -rf data/raw data/shards outputs mlruns ray_results
