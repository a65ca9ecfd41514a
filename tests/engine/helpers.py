"""Requests shared by the engine's tests."""

from __future__ import annotations

import numpy as np

from hf_prospector.engine import Request


def varied_requests(seed: int, n: int = 8) -> list[Request]:
    """Lengths that give micro-batches of one and of several rows, padded and not."""
    rng = np.random.default_rng(seed)
    lengths = [60, 9, 9, 9, 30, 28, 25, 4][:n]
    return [Request(list(rng.integers(3, 300, k)), max(1, k // 3)) for k in lengths]
