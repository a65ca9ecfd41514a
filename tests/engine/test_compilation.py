"""torch.compile: compiled layers give the eager numbers, ``auto`` compiles after enough model time, a failing
compiler falls back to eager."""

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from hf_prospector.engine import Engine, Request, compilation, resolve_compile
from tests.engine.helpers import varied_requests
from tests.oracles import full_logits_logprobs


@pytest.fixture
def compiled_engine(tiny_model_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    return Engine(model, AutoTokenizer.from_pretrained(tiny_model_dir), "cpu", "float32", token_budget=64,
                  compile=True)


@pytest.mark.slow
def test_compiled_engine_equals_eager_reference(compiled_engine, tiny_model_dir):
    """Compiled decoder layers give the eager model's log-probabilities, cached passes included. On a CPU they
    compute attention as the model's own arithmetic; the reference is the model as it loads (SDPA)."""
    engine = compiled_engine
    assert engine.compiled and engine.model.config._attn_implementation == "eager"
    reference = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert reference.config._attn_implementation == "sdpa"
    reqs = varied_requests(2)
    got = engine.logprobs(reqs)
    assert engine.compiled and engine.compile_failed is None  # it really ran compiled
    prefix = [1, 50, 60, 70, 80]
    conts = [Request([90, 91, 92, 93], 0), Request(list(range(120, 150)), 10)]
    prefixed = engine.prefixed_logprobs(prefix, conts)  # compiled too, over the shared prefix cache
    assert engine.compile_failed is None
    with torch.compiler.set_stance("force_eager"):
        for r, g in zip(reqs, got):
            np.testing.assert_allclose(g, full_logits_logprobs(reference, r.ids, r.start), atol=1e-4)
        for c, g in zip(conts, prefixed):
            np.testing.assert_allclose(g, full_logits_logprobs(reference, prefix + c.ids, len(prefix) + c.start),
                                       atol=1e-4)


def test_auto_compiles_after_enough_model_time(tiny_model_dir, monkeypatch):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    engine = Engine(model, AutoTokenizer.from_pretrained(tiny_model_dir), "cpu", "float32", token_budget=64,
                    compile="auto")
    reqs = varied_requests(3, n=4)
    eager = engine.logprobs(reqs)
    assert not engine.compiled and engine.eager_seconds > 0  # a short run stays eager
    monkeypatch.setattr(compilation, "COMPILE_AFTER_S", engine.eager_seconds)
    engine.logprobs(reqs[:1])
    assert engine.compiled  # the threshold was crossed: later passes are compiled
    for a, b in zip(eager, engine.logprobs(reqs)):
        np.testing.assert_allclose(a, b, atol=1e-4)


def test_compiler_failure_falls_back_to_eager(compiled_engine, monkeypatch):
    """A machine without a working compiler (no C++ toolchain, say) still scores, with a warning."""
    from torch._dynamo.exc import BackendCompilerFailed

    def broken_backend(*args, **kwargs):
        raise BackendCompilerFailed(broken_backend, RuntimeError("no C++ compiler"))

    engine = compiled_engine
    torch._dynamo.reset()
    for layer in engine.compiler.decoder_layers():
        layer.compile(dynamic=True, backend=broken_backend)
    reqs = varied_requests(4, n=3)
    with pytest.warns(UserWarning, match="torch.compile is not used"):
        got = engine.logprobs(reqs)
    assert not engine.compiled and "BackendCompilerFailed" in engine.compile_failed
    assert engine.model.config._attn_implementation == "sdpa"  # the model is left with its own attention
    for r, g in zip(reqs, got):
        np.testing.assert_allclose(g, full_logits_logprobs(engine.model, r.ids, r.start), atol=1e-4)


def test_compile_setting_is_checked(monkeypatch):
    assert resolve_compile(True) is True and resolve_compile("auto") == "auto" and resolve_compile("off") is False
    monkeypatch.setenv("HF_PROSPECTOR_COMPILE", "off")
    assert resolve_compile(None) is False
    with pytest.raises(ValueError, match="compile must be"):
        resolve_compile("fast")
