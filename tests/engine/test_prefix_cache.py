"""The shared-prefix key/value cache: continuations scored after one prefix pass equal full recomputation."""

import logging

import numpy as np
import torch

from hf_prospector.engine import Engine, Request, SharedPrefixCache
from hf_prospector.models import load_causal_lm
from tests.oracles import full_logits_logprobs


def test_prefixed_logprobs_equal_full_recomputation(engine):
    prefix = [1, 50, 60, 70, 80]
    conts = [Request([90, 91, 92, 93], 0), Request([100, 101], 1), Request(list(range(120, 160)), 10)]
    got = engine.prefixed_logprobs(prefix, conts)
    for c, g in zip(conts, got):
        full = prefix + c.ids
        ref = full_logits_logprobs(engine.model, full, len(prefix) + c.start)
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
        np.testing.assert_allclose(g, full_logits_logprobs(engine.model, prefix * 2 + c.ids, 10 + c.start), atol=1e-4)


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
