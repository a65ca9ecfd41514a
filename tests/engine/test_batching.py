import logging
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from hf_prospector.engine import Engine, Request, SharedPrefixCache, plan_batches, resolve_compile, resolve_dtype
from hf_prospector.engine import compilation, hardware, memory
from hf_prospector.models import load_causal_lm


@pytest.fixture(scope="module")
def engine(tiny_model_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    return Engine(model, AutoTokenizer.from_pretrained(tiny_model_dir), "cpu", "float32", token_budget=64)


def reference_logprobs(model, ids, start):
    """One sequence, the full vocabulary at every position, gathered by hand."""
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].float()
    lp = torch.log_softmax(logits, dim=-1)
    return np.array([lp[p - 1, ids[p]].item() for p in range(start, len(ids))])


def test_plan_batches_respects_budget_and_covers_all():
    lengths = [5, 40, 3, 17, 17, 60, 1]
    batches = plan_batches(lengths, token_budget=40)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for b in batches:
        assert len(b) == 1 or len(b) * max(lengths[i] for i in b) <= 40
        assert min(lengths[i] for i in b) >= 0.75 * max(lengths[i] for i in b)  # padding capped
    assert batches[0] == [5]  # longest first
    assert [sorted(b) for b in plan_batches([10, 9, 8, 3], token_budget=100)] == [[0, 1, 2], [3]]


def test_batched_equals_one_at_a_time_and_reference(engine):
    rng = np.random.default_rng(0)
    reqs = [Request(list(rng.integers(3, 300, n)), s) for n, s in [(3, 1), (50, 20), (7, 2), (120, 100), (12, 11), (33, 1)]]
    batched = engine.logprobs(reqs)
    assert engine.forward_passes >= 3  # the budget of 64 tokens forced several micro-batches
    for r, got in zip(reqs, batched):
        alone = engine.logprobs([r])[0]
        ref = reference_logprobs(engine.model, r.ids, r.start)
        assert got.shape == (len(r.ids) - r.start,)
        np.testing.assert_allclose(got, alone, atol=1e-4)
        np.testing.assert_allclose(got, ref, atol=1e-4)


def test_prefixed_logprobs_equal_full_recomputation(engine):
    prefix = [1, 50, 60, 70, 80]
    conts = [Request([90, 91, 92, 93], 0), Request([100, 101], 1), Request(list(range(120, 160)), 10)]
    got = engine.prefixed_logprobs(prefix, conts)
    for c, g in zip(conts, got):
        full = prefix + c.ids
        ref = reference_logprobs(engine.model, full, len(prefix) + c.start)
        np.testing.assert_allclose(g, ref, atol=1e-4)


def test_prefix_cache_copied_per_batch_where_it_cannot_be_shared(engine, monkeypatch):
    """Caches the shared view does not support (sliding windows, say) are copied per micro-batch instead."""
    prefix = [1, 50, 60, 70, 80]
    conts = [Request([90, 91, 92, 93], 0), Request([100, 101], 1), Request(list(range(120, 160)), 10)]
    cache = engine.model(input_ids=torch.tensor([prefix]), use_cache=True).past_key_values
    assert SharedPrefixCache.supports(cache)  # the tiny Llama takes the shared path by default
    shared = engine.prefixed_logprobs(prefix, conts)
    monkeypatch.setattr(SharedPrefixCache, "supports", staticmethod(lambda cache: False))
    copied = engine.prefixed_logprobs(prefix * 2, conts)  # twice: the copies must not leak into each other
    copied_again = engine.prefixed_logprobs(prefix, conts)
    for a, b in zip(shared, copied_again):
        np.testing.assert_allclose(a, b, atol=1e-5)
    for c, g in zip(conts, copied):
        np.testing.assert_allclose(g, reference_logprobs(engine.model, prefix * 2 + c.ids, 10 + c.start), atol=1e-4)


def test_bad_request_start(engine):
    with pytest.raises(ValueError, match="outside"):
        engine.logprobs([Request([1, 2], 0)])


def test_dtype_resolution(monkeypatch):
    cpu = torch.device("cpu")
    assert resolve_dtype("float32", cpu) == torch.float32
    assert resolve_dtype("bfloat16", cpu) == torch.bfloat16
    try:
        with open("/proc/cpuinfo") as f:
            flags = set(f.read().split())
    except OSError:
        flags = set()
    expected = torch.bfloat16 if {"avx512_bf16", "amx_bf16"} & flags else torch.float32
    assert resolve_dtype("auto", cpu) == expected  # this CPU's flags decide
    for native, dtype in ((True, torch.bfloat16), (False, torch.float32)):
        monkeypatch.setattr(hardware, "_cpu_has_bf16", lambda native=native: native)
        assert resolve_dtype("auto", cpu) == dtype
    with pytest.raises(ValueError, match="unknown dtype"):
        resolve_dtype("int3", torch.device("cpu"))


def test_out_of_memory_halves_the_micro_batch_and_retries(engine, monkeypatch):
    rng = np.random.default_rng(1)
    reqs = [Request(list(rng.integers(3, 300, 10)), 2) for _ in range(6)]
    expected = engine.logprobs(reqs)
    real_run = Engine._run_batch

    def small_batches_only(self, batch, past=None):
        if len(batch) > 2:
            raise torch.cuda.OutOfMemoryError("simulated")
        return real_run(self, batch, past)

    monkeypatch.setattr(Engine, "_run_batch", small_batches_only)
    budget = engine.token_budget
    try:
        got = engine.logprobs(reqs)
        assert engine.token_budget < budget  # later calls start from the smaller budget
    finally:
        engine.token_budget = budget  # the engine is the module's: the next test gets its budget back
    for a, b in zip(expected, got):
        np.testing.assert_allclose(a, b, atol=1e-5)


# -- torch.compile ----------------------------------------------------------------------------------------
def varied_requests(seed: int, n: int = 8) -> list[Request]:
    """Lengths that give micro-batches of one and of several rows, padded and not."""
    rng = np.random.default_rng(seed)
    lengths = [60, 9, 9, 9, 30, 28, 25, 4][:n]
    return [Request(list(rng.integers(3, 300, k)), max(1, k // 3)) for k in lengths]


@pytest.fixture
def compiled_engine(tiny_model_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    return Engine(model, AutoTokenizer.from_pretrained(tiny_model_dir), "cpu", "float32", token_budget=64,
                  compile=True)


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
            np.testing.assert_allclose(g, reference_logprobs(reference, r.ids, r.start), atol=1e-4)
        for c, g in zip(conts, prefixed):
            np.testing.assert_allclose(g, reference_logprobs(reference, prefix + c.ids, len(prefix) + c.start),
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
        np.testing.assert_allclose(g, reference_logprobs(engine.model, r.ids, r.start), atol=1e-4)


def test_compile_setting_is_checked(monkeypatch):
    assert resolve_compile(True) is True and resolve_compile("auto") == "auto" and resolve_compile("off") is False
    monkeypatch.setenv("HF_PROSPECTOR_COMPILE", "off")
    assert resolve_compile(None) is False
    with pytest.raises(ValueError, match="compile must be"):
        resolve_compile("fast")


def test_full_forward_path_equals_head_shortcut(engine):
    """Architectures failing the head check run the whole model; both paths give the same numbers."""
    reqs = varied_requests(5, n=5)
    shortcut = engine.logprobs(reqs)
    engine._head_only = False
    try:
        full = engine.logprobs(reqs)
    finally:
        engine._head_only = True
    for a, b in zip(shortcut, full):
        np.testing.assert_allclose(a, b, atol=1e-5)


@pytest.mark.skipif(memory._malloc_trim() is None, reason="malloc_trim is glibc's")
def test_release_freed_memory_returns_freed_blocks_to_the_os():
    # Freeing a 16 MB block raises glibc's threshold for using mmap, so the 1 MB blocks that follow come from the
    # heap; with one kept at its top, freeing the others returns nothing to the OS until the trim.
    large = torch.ones(16 << 20, dtype=torch.uint8)
    del large
    blocks = [torch.ones(1 << 20, dtype=torch.uint8) for _ in range(200)]
    kept = blocks.pop()
    del blocks
    before = memory.resident_bytes() / 2**20
    assert memory.release_freed_memory()
    assert before - memory.resident_bytes() / 2**20 > 100
    assert kept.sum() == 1 << 20


def fake_trim(monkeypatch) -> list[int]:
    """Replaces malloc_trim; returns the list its calls are recorded in."""
    trims = []
    monkeypatch.setattr(memory, "_malloc_trim", lambda: lambda pad: trims.append(pad) or 1)
    monkeypatch.setattr(memory, "_resident_after_release", 0)
    return trims


def test_release_if_grown_by_waits_until_the_process_has_grown(monkeypatch):
    trims, resident = fake_trim(monkeypatch), [5000]
    monkeypatch.setattr(memory, "resident_bytes", lambda: resident[0])
    assert memory.release_freed_memory()  # unconditional; remembers 5000 bytes
    resident[0] = 5099
    assert not memory.release_freed_memory(if_grown_by=100)
    assert len(trims) == 1
    resident[0] = 5100
    assert memory.release_freed_memory(if_grown_by=100)
    assert len(trims) == 2
    resident[0] = 5150  # measured from 5100 now
    assert not memory.release_freed_memory(if_grown_by=100)
    assert len(trims) == 2


def test_engine_checks_freed_memory_after_every_micro_batch(engine, monkeypatch):
    trims, grows = fake_trim(monkeypatch), iter(range(0, 1 << 40, 1 << 20))
    monkeypatch.setattr(memory, "resident_bytes", lambda: next(grows))  # grows 1 MB per reading
    reqs = varied_requests(3)
    passes = engine.forward_passes
    monkeypatch.setattr(memory, "FREED_MEMORY_SLACK", 1 << 40)
    engine.logprobs(reqs)
    assert len(trims) == 1 and engine.forward_passes - passes > 1  # only the hand-back that ends the call
    monkeypatch.setattr(memory, "FREED_MEMORY_SLACK", 1 << 20)
    passes = engine.forward_passes
    engine.logprobs(reqs)
    assert len(trims) == 1 + engine.forward_passes - passes + 1


def test_engine_hands_freed_memory_back_after_every_call(engine, monkeypatch):
    """The engine owns the memory policy: each call ends with an unconditional hand-back, so a long run (of
    ``ds.map`` batches, or of golden-score candidates) stays flat without the scorers' help."""
    calls = []
    monkeypatch.setattr(memory, "release_freed_memory", lambda if_grown_by=0: calls.append(if_grown_by) or True)
    engine.logprobs(varied_requests(6))
    assert calls.count(0) == 1 and len(calls) > 1  # and the conditional check after each micro-batch
    calls.clear()
    engine.prefixed_logprobs([1, 50, 60], [Request([90, 91, 92], 0), Request(list(range(100, 140)), 5)])
    assert calls.count(0) == 1


def test_onednn_kernel_cache_bounded_by_the_engine_unless_the_user_chose(tiny_model_dir):
    """Importing the engine changes nothing; building one caps oneDNN's cache before its first pass."""
    read = ("import os, sys; from hf_prospector.engine import Engine; from hf_prospector.models import load_causal_lm\n"
            "on_import = os.environ.get('ONEDNN_PRIMITIVE_CACHE_CAPACITY', 'unset')\n"
            "Engine(*load_causal_lm(sys.argv[1]), dtype='float32', compile=False)\n"
            "print(on_import, os.environ['ONEDNN_PRIMITIVE_CACHE_CAPACITY'])")
    env = {k: v for k, v in os.environ.items() if k != "ONEDNN_PRIMITIVE_CACHE_CAPACITY"}
    unset = subprocess.run([sys.executable, "-c", read, str(tiny_model_dir)], env=env, capture_output=True, text=True,
                           check=True)
    chosen = subprocess.run([sys.executable, "-c", read, str(tiny_model_dir)],
                            env={**env, "ONEDNN_PRIMITIVE_CACHE_CAPACITY": "64"}, capture_output=True, text=True,
                            check=True)
    assert (unset.stdout.strip(), chosen.stdout.strip()) == ("unset 256", "64 64")


def test_aligned_head_projects_as_the_head_does():
    torch.manual_seed(0)
    hidden = torch.randn(7, 16)
    for bias in (False, True):
        head = torch.nn.Linear(16, 50, bias=bias)  # 50 is not a multiple of 64
        aligned = hardware.AlignedHead(head)
        assert aligned.weight.shape == (64, 16)
        torch.testing.assert_close(aligned(hidden), head(hidden))
    assert isinstance(hardware.scoring_head(head, torch.device("cuda")), hardware.AlignedHead)
    assert hardware.scoring_head(head, torch.device("cpu")) is head  # CPUs: not measured to help
    even = torch.nn.Linear(16, 128)
    assert hardware.scoring_head(even, torch.device("cuda")) is even


def test_attention_kernels_leave_out_cudnn_on_cuda_only():
    assert torch.backends.cuda.cudnn_sdp_enabled()
    with hardware.attention_kernels(torch.device("cuda")):
        assert not torch.backends.cuda.cudnn_sdp_enabled() and torch.backends.cuda.flash_sdp_enabled()
    assert torch.backends.cuda.cudnn_sdp_enabled()
    with hardware.attention_kernels(torch.device("cpu")):
        assert torch.backends.cuda.cudnn_sdp_enabled()


def test_prefix_cache_is_passed_under_the_current_argument_name(tiny_model_dir, caplog):
    """transformers renamed ``past_key_values=`` to ``cache=`` and drops the old name in 5.40: no deprecation."""
    import transformers

    model, tok = load_causal_lm(str(tiny_model_dir))
    engine = Engine(model, tok, dtype="float32", compile=False)
    transformers.logging.enable_propagation()
    try:
        with caplog.at_level(logging.WARNING):
            engine.prefixed_logprobs([1, 5, 6, 7], [Request([8, 9, 10], 0), Request([11, 12], 1)])
    finally:
        transformers.logging.disable_propagation()
    assert not [r for r in caplog.records if "deprecated" in r.getMessage()]
