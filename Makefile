# Two entry points that work on a fresh machine with Python 3.11: `make demo`, `make test`.
PY ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# torch and torchvision come from this machine's local files; install them first,
# pinned, so the project's ranges are already satisfied and no other build is fetched.
TORCH_PINS := torch==2.14.1 torchvision==0.29.1
# uv installs the same pins and the same project as pip would, several times faster (whole set-up 57 s instead
# of about 3 minutes, most of it unpacking torch's 5 GB): it unpacks wheels in parallel. uv does not read
# pip's configuration, so it is handed pip's local indexes (where those torch builds lie), ahead of PyPI.
# --compile-bytecode, as pip does by default: with PYTHONDONTWRITEBYTECODE set (as on these machines) every process
# would otherwise compile torch and the rest from source on each start, 8 of the 23 s a test collection took.
PIP_INDEXES := $(shell $(PY) -m pip config get global.extra-index-url 2>/dev/null)
UV_VERSION := uv==0.13.10
UV_INSTALL := $(BIN)/uv pip install -q --compile-bytecode --python $(BIN)/python --index-strategy unsafe-best-match \
	$(addprefix --extra-index-url ,$(PIP_INDEXES))

.PHONY: setup demo lint test test-fast docs bench lock clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q $(UV_VERSION)
	$(UV_INSTALL) $(TORCH_PINS)
	$(UV_INSTALL) -e '.[test]' $(TORCH_PINS)
	# the animals profile's data; --no-deps because its own loader pulls in tensorflow, which oodsynth never imports
	$(UV_INSTALL) --no-deps animal-mnist==0.4
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/oodsynth demo

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# Everything: ruff and mypy, then the whole suite (import contracts and the strict docs build included), on
# TEST_WORKERS processes (pytest-xdist); the session-wide fixtures are built once for all workers
# (tests/helpers/once.py). Not --dist loadscope: it keys tests by node id, and schemathesis gives its 14 fuzzed
# operations one node id, so 13 of them silently never ran (837 passed instead of 850).
TEST_WORKERS ?= 2
test: lint
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS)

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

# The compose images' requirements: every package pinned with its hashes, resolved against the versions this venv
# runs the suite with (regenerate after changing pyproject.toml or the venv). The API image takes torch's CPU build
# from PyTorch's own index, so its lock leaves out torch and the CUDA-only packages of the PyPI build.
LOCK := $(BIN)/uv pip compile pyproject.toml -q --no-header --generate-hashes --python-version 3.11 \
	--python-platform x86_64-manylinux_2_28 -c $(VENV)/tested.txt
CUDA_ONLY := torch triton cuda-bindings cuda-pathfinder cuda-toolkit nvidia-cublas nvidia-cuda-cupti \
	nvidia-cuda-nvrtc nvidia-cuda-runtime nvidia-cudnn-cu13 nvidia-cufft nvidia-cufile nvidia-curand nvidia-cusolver \
	nvidia-cusparse nvidia-cusparselt-cu13 nvidia-nccl-cu13 nvidia-nvjitlink nvidia-nvshmem-cu13 nvidia-nvtx
lock: $(STAMP)
	$(BIN)/uv pip freeze -q --python $(BIN)/python --exclude-editable > $(VENV)/tested.txt
	$(LOCK) --extra worker -o services/diffusion_worker/requirements.lock
	$(LOCK) --extra api $(addprefix --no-emit-package ,$(CUDA_ONLY)) -o services/embed_sampler/requirements.lock

clean:
	rm -rf $(VENV) .pytest_cache site
