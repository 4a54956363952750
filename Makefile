# gffmerge developer commands. `make demo` and `make test` do all set-up on a fresh machine.
PYTHON_BOOT ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
EXTRAS ?= all,test
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
PYTEST_ARGS ?=

.PHONY: install demo test test-adapters lint cuda-check gpu-check checkpoints bench sanitize clean

$(PY):
	$(PYTHON_BOOT) -m venv $(VENV)
	$(PIP) install --upgrade pip >/dev/null

# Torch first (pinned: an unpinned torch resolves to a multi-GB CUDA build; no .pyc up
# front: Python writes those for the modules it imports), then the
# build tools, then the package itself built against that torch.
install: $(PY)
	@if [ -n "$(TORCH_SPEC)" ]; then $(PIP) install --no-compile "$(TORCH_SPEC)" numpy; \
	 else $(PY) -c "import torch" || { echo "TORCH_SPEC is empty but $(VENV) has no torch"; exit 1; }; fi
	$(PIP) install "scikit-build-core>=0.10" pybind11
	@command -v cmake >/dev/null 2>&1 || $(PIP) install "cmake>=3.25,<4"
	@command -v ninja >/dev/null 2>&1 || $(PIP) install ninja
	$(PIP) install --no-compile --no-build-isolation -e ".[$(EXTRAS)]"
	@$(PY) -c "import torch, gffmerge_ext as e; print('gffmerge_ext built:', e.extension_available(), '| torch', torch.__version__)"

demo: install
	$(VENV)/bin/gffmerge demo

# The CUDA compile check runs when nvcc is present (CI has it); without nvcc it says so
# and is skipped here (a plain `make cuda-check` fails instead).
# tools/test.sh runs the CUDA compile check in the background beside install, ruff and pytest.
test:
	PYTHON_BOOT=$(PYTHON_BOOT) VENV=$(VENV) PYTEST_ARGS="$(PYTEST_ARGS)" MAKE="$(MAKE)" \
	  bash tools/test.sh

# The foundation adapters' tests (CHGNet, SevenNet-0, e3nn irreps), skipped by `make test`
# because their extras are heavy: installs the extras' packages into $(VENV) with torch held
# at its pin (a constraint, so pip fails rather than move torch), then runs those tests.
ADAPTER_TESTS := tests/test_adapter_chgnet.py tests/test_adapter_sevenn.py \
  tests/test_adapter_e3nn.py tests/test_adapter_species.py
test-adapters: install
	@mkdir -p build && $(PY) -c "import torch; print('torch==' + torch.__version__.split('+')[0])" > build/torch-pin.txt
	$(PIP) install -c build/torch-pin.txt chgnet sevenn
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -p no:cacheprovider $(PYTEST_ARGS) $(ADAPTER_TESTS)

lint: install
	$(VENV)/bin/ruff check .

bench: install
	$(PY) benchmarks/bench_gram.py
	$(PY) benchmarks/bench_edge_gram.py

# Regenerates checkpoints/ (about an hour on 2 cores; single-threaded runs are the fastest
# per core for these small models) and checkpoints/README.md.
checkpoints: install
	OMP_NUM_THREADS=1 $(PY) -m gffmerge.recipes --all

# Compile-only check of the CUDA code, no GPU needed (tools/cuda_check.sh): nvcc on the
# torch-free kernels for sm_80/sm_90, then the whole extension against torch 2.14.1+cu130 in its
# own .venv-cuda. Without nvcc it fails, unless CUDA_CHECK=skip.
cuda-check:
	PYTHON_BOOT=$(PYTHON_BOOT) bash tools/cuda_check.sh

# On a machine with a CUDA GPU (and a CUDA torch, nvcc, cmake, pybind11; no internet needed):
# builds the extension with CUDA, runs the CUDA tests and both benchmarks on the GPU in at
# most ~8 minutes (tools/gpu_check.sh). Logs and a summary go to benchmarks/results/gpu_check/.
gpu-check:
	bash tools/gpu_check.sh

# The CPU extension built with ASan + UBSan in build/sanitize (the installed one is untouched),
# then the CPU op tests and a short fuzz run against it (tools/sanitize.sh; ~5 min on 2 cores).
# Not part of `make test`.
sanitize: install
	bash tools/sanitize.sh

clean:
	rm -rf build _skbuild dist *.egg-info demo_out
