"""The golden score's one-shot prefix, encoded once and read by every micro-batch of continuations."""

from __future__ import annotations

import torch
from transformers.cache_utils import Cache, DynamicLayer


class SharedPrefixCache(Cache):
    """One prefix's key/value cache, shared read-only by a batch of continuations.

    Each layer's ``update`` returns the prefix's keys and values, broadcast over the batch, followed by the
    continuation's, and stores nothing: no copy of the prefix per micro-batch. The prefix's keys and values of
    all layers sit in one tensor indexed by the layer number, which a compiled decoder layer takes as a runtime
    integer, so one graph serves every layer (a list lookup would specialise, compiling once per layer).
    Only for caches of plain full-attention layers (:meth:`supports`); sliding windows keep per-layer lengths.
    """

    def __init__(self, prefix: Cache):
        super().__init__(layers=prefix.layers)  # the prefix's layers answer the mask's length questions
        self.keys = torch.stack([layer.keys for layer in prefix.layers])
        self.values = torch.stack([layer.values for layer in prefix.layers])

    @staticmethod
    def supports(cache: Cache) -> bool:
        """Plain full-attention layers, all filled, all of one shape (so they stack)."""
        layers = cache.layers
        plain = all(type(layer) is DynamicLayer and layer.is_initialized for layer in layers)
        return bool(layers) and plain and len({layer.keys.shape for layer in layers}) == 1

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        batch = key_states.shape[0]
        keys = torch.cat([self.keys[layer_idx].expand(batch, -1, -1, -1), key_states], dim=-2)
        values = torch.cat([self.values[layer_idx].expand(batch, -1, -1, -1), value_states], dim=-2)
        return keys, values
