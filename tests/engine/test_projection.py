"""The output projection against plain full-vocabulary log-softmaxes, and the head shortcut (hidden states
projected by the head alone) against the model's full forward pass."""

import numpy as np
import pytest
import torch

from hf_prospector.engine import BlockedProjection, target_logprobs
from tests.engine.helpers import varied_requests
from tests.oracles import full_logits_logprobs


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("softcap", [None, 3.0])
@pytest.mark.parametrize("block", [8, 50, 64])  # blocks that split the vocabulary unevenly, exactly, and not at all
def test_blocked_projection_equals_a_full_log_softmax(bias, softcap, block):
    torch.manual_seed(0)
    head = torch.nn.Linear(16, 50, bias=bias)
    hidden, targets = torch.randn(7, 16), torch.randint(0, 50, (7,))
    logits = hidden @ head.weight.T + (head.bias if bias else 0)
    if softcap:
        logits = softcap * torch.tanh(logits / softcap)
    expected = torch.log_softmax(logits.double(), dim=-1)[torch.arange(7), targets].float()
    with torch.no_grad():
        torch.testing.assert_close(target_logprobs(BlockedProjection(head, block), hidden, targets, softcap), expected)
        torch.testing.assert_close(target_logprobs(head, hidden, targets, softcap), expected)


def test_engine_projecting_by_vocabulary_blocks_matches_full_logits(engine):
    """The engine's CPU float32 head, with blocks small enough that every position spans many of them."""
    assert isinstance(engine.head, BlockedProjection)
    reqs = varied_requests(3)
    default = engine.head
    engine.head = BlockedProjection(default.head, 7)
    try:
        got = engine.logprobs(reqs)
    finally:
        engine.head = default
    for r, g in zip(reqs, got):
        np.testing.assert_allclose(g, full_logits_logprobs(engine.model, r.ids, r.start), atol=1e-4)


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
