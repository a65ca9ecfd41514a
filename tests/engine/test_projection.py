"""The head shortcut (hidden states projected by the head alone) against the model's full forward pass."""

import numpy as np

from tests.engine.helpers import varied_requests


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
