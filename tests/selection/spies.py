"""Stand-in and spy encoders for the selection tests."""

from __future__ import annotations

import zlib

import numpy as np


class FakeEncoder:
    """Deterministic vectors from a hash of the text; counts calls and texts like a spy."""

    def __init__(self, dim: int = 6):
        self.dim, self.calls, self.texts = dim, 0, []

    def encode(self, texts, **kwargs):
        self.calls += 1
        self.texts += list(texts)
        return np.stack([np.random.default_rng(zlib.crc32(t.encode())).normal(size=self.dim) for t in texts])


class Spy:
    """Wraps a real encoder's ``encode`` and counts the calls and the rows encoded."""

    def __init__(self, encoder):
        self.encoder, self.calls, self.rows = encoder, 0, 0

    def encode(self, texts, **kwargs):
        self.calls += 1
        self.rows += len(texts)
        return self.encoder.encode(texts, **kwargs)
