# Two entry points that work on a fresh machine with Python 3.11: `make demo`, `make test`.
PY ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# torch and torchvision come from this machine's local files; install them first,
# pinned, so the project's ranges are already satisfied and pip fetches no other build.
TORCH_PINS := torch==2.14.1 torchvision==0.29.1

.PHONY: setup demo lint test test-fast docs bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH_PINS)
	$(BIN)/pip install -q -e '.[test]' $(TORCH_PINS)
	# the animals profile's data; --no-deps because its own loader pulls in tensorflow, which oodsynth never imports
	$(BIN)/pip install -q --no-deps animal-mnist==0.4
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/oodsynth demo

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# Everything: ruff and mypy, then the whole suite (import contracts and the strict docs build included).
test: lint
	$(BIN)/python -m pytest -q

# The quick loop while editing: no process-spawning or training tests (marked slow), on FAST_WORKERS
# processes (pytest-xdist; each has its own Redis and temp folders).
FAST_WORKERS ?= 2
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow" -n $(FAST_WORKERS)

# The documentation site (mkdocs-material) into site/; a broken link fails the build.
docs: $(STAMP)
	$(BIN)/mkdocs build --strict

bench: $(STAMP)
	$(BIN)/python bench/sampling.py --classes 3 --reference-rounds 5
	$(BIN)/python bench/decode.py

clean:
	rm -rf $(VENV) .pytest_cache site
