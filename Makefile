# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test install clean bench soak vscode-e2e

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

test: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q

# Opt-in: the extension in a real VS Code (code-server + headless Chromium; see
# editors/vscode/e2e/setup.sh for why it is not part of `make test`).
vscode-e2e: $(STAMP)
	editors/vscode/e2e/setup.sh
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -rs tests/test_editors.py -k real_vscode

# The reliability run of docs/reliability.md: 10,000 fuzzed messages, 4 clients x 200
# completions with 30% cancelled while rewrites run, five faults (about 10 minutes).
soak: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python tests/soak.py

bench: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/diffill bench

clean:
	rm -rf $(VENV) build *.egg-info
