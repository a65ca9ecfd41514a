"""Engine: micro-batches within the token budget, the same numbers as one row at a time, out-of-memory retries."""

import numpy as np
import pytest
import torch

from hf_prospector.engine import Engine, Request, plan_batches
from tests.oracles import full_logits_logprobs


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
        ref = full_logits_logprobs(engine.model, r.ids, r.start)
        assert got.shape == (len(r.ids) - r.start,)
        np.testing.assert_allclose(got, alone, atol=1e-4)
        np.testing.assert_allclose(got, ref, atol=1e-4)


def test_bad_request_start(engine):
    with pytest.raises(ValueError, match="outside"):
        engine.logprobs([Request([1, 2], 0)])


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
