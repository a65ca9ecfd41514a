"""torch.compile: compiled layers give the eager numbers, ``auto`` compiles when the run repays the compile's cost on
this machine (measured and kept on disk), a failing compiler falls back to eager."""

import json

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from hf_prospector.engine import Engine, Request, compilation, resolve_compile
from tests.engine.helpers import varied_requests
from tests.oracles import full_logits_logprobs


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    """Each test its own record of compile costs, where torch keeps its kernels (so the compiles are cold too)."""
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))


@pytest.fixture
def compiled_engine(tiny_model_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    return Engine(model, AutoTokenizer.from_pretrained(tiny_model_dir), "cpu", "float32", token_budget=64,
                  compile=True)


@pytest.mark.slow
def test_compiled_engine_equals_eager_reference(compiled_engine, tiny_model_dir, tmp_path):
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
    recorded = json.loads((tmp_path / "inductor" / "hf_prospector_compile_seconds.json").read_text())
    assert len(recorded) == 1 and list(recorded.values())[0] > 0  # the first compiled pass's cost, for later runs
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
    monkeypatch.setattr(engine.compiler, "cost", lambda: engine.eager_seconds)  # a compile this run has paid for
    engine.logprobs(reqs[:1])
    assert engine.compiled  # the threshold was crossed: later passes are compiled
    for a, b in zip(eager, engine.logprobs(reqs)):
        np.testing.assert_allclose(a, b, atol=1e-4)


@pytest.fixture
def auto(tiny_model_dir, monkeypatch):
    """A compiler for ``"auto"`` whose compile only flips its state (the decision is under test, not torch)."""
    def fake_compile(self):
        self.compiled, self._timing_first = True, True

    monkeypatch.setattr(compilation.DeferredCompiler, "compile", fake_compile)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    return lambda: compilation.DeferredCompiler(model, torch.device("cpu"), "auto", "past_key_values")


def test_not_told_the_run_length_auto_compiles_once_eager_time_equals_the_cost(auto, monkeypatch):
    monkeypatch.setattr(compilation, "COMPILE_AFTER_S", 60.0)
    compiler = auto()
    compiler.record(59.0, 1000)
    assert not compiler.compiled
    compiler.record(1.0, 10)
    assert compiler.compiled


def test_told_the_rows_left_auto_compiles_at_once_when_they_repay_it_and_never_when_they_cannot(auto, monkeypatch):
    monkeypatch.setattr(compilation, "COMPILE_AFTER_S", 60.0)
    monkeypatch.setattr(compilation, "COMPILED_SAVING", {torch.float32: 0.5})  # the tiny model's dtype
    short = auto()
    short.record(10.0, 1000)  # 100 rows in 10 s: 0.1 s a row
    short.expect(100, 1000)  # 100 s left, 50 s saved: less than the 60 s compile
    assert short.worth_it is False and not short.compiled
    short.record(100.0, 10000)  # past the cost, yet told it cannot repay: stays eager
    assert not short.compiled
    long = auto()
    long.record(10.0, 1000)
    long.expect(100, 1300)  # 130 s left, 65 s saved
    assert long.worth_it and long.compiled


def test_the_first_compiled_pass_is_the_compile_cost_kept_for_later_runs(auto, monkeypatch, tmp_path):
    monkeypatch.setattr(compilation, "COMPILE_AFTER_S", 60.0)
    first = auto()
    assert first.cost() == 60.0  # nothing measured on this machine yet
    first.record(60.0, 6000)  # eager: 0.01 s a token
    assert first.compiled
    first.record(25.0, 1000)  # compiled: 10 s of it is the pass itself, 15 s the compile
    first.record(5.0, 1000)  # later passes are not the compile
    assert auto().cost() == pytest.approx(15.0)  # a later run (same model, dtype, device, threads) knows it
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "wiped"))
    assert auto().cost() == 60.0  # the record lives with the kernels: another (or a wiped) kernel cache is cold
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(threads + 1)
        assert auto().cost() == 60.0  # another thread count compiles other kernels: not measured
    finally:
        torch.set_num_threads(threads)


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


def test_a_compile_that_failed_records_no_cost(auto, monkeypatch):
    monkeypatch.setattr(compilation, "COMPILE_AFTER_S", 60.0)
    compiler = auto()
    compiler.record(60.0, 6000)
    compiler.failed = "BackendCompilerFailed: no C++ compiler"  # as give_up leaves it
    compiler.record(90.0, 1000)
    assert auto().cost() == 60.0
