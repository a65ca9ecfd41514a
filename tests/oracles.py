"""Independent oracles the tests check the library against, written once.

Each is written from its definition with plain torch and Python, never with hf_prospector's code, so a bug in
the library cannot hide in its own reference.
"""

from __future__ import annotations

import math

import numpy as np
import torch


def full_logits_logprobs(model, ids: list[int], start: int) -> np.ndarray:
    """``log p(ids[p] | ids[:p])`` for ``p`` from ``start`` on: one plain forward pass over the whole sequence,
    the full vocabulary's log-softmax at every position, gathered by hand."""
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].float()
    logprobs = torch.log_softmax(logits, dim=-1)
    return np.array([logprobs[p - 1, ids[p]].item() for p in range(start, len(ids))])


def full_logits_loss(model, ids: list[int], start: int) -> float:
    """A row's loss: the mean negative log-likelihood of ``ids[start:]``, from the full logits."""
    return -float(np.mean(full_logits_logprobs(model, ids, start)))


def top_fraction(values, fraction: float, *, below: float | None = 1.0, inclusive: bool = False,
                 lowest: bool = False) -> list[int]:
    """Row indices of the best ``floor(fraction * eligible)`` rows, best first (highest, or lowest), ties to the
    earlier row. Eligible: a finite value, below ``below`` (at most ``below`` when inclusive; None: no bound)."""
    def eligible(v) -> bool:
        if v is None or not math.isfinite(v):
            return False
        return below is None or (v <= below if inclusive else v < below)

    pool = [i for i, v in enumerate(values) if eligible(v)]
    ranked = sorted(pool, key=lambda i: (values[i] if lowest else -values[i], i))
    return ranked[:math.floor(fraction * len(pool) + 1e-9)]
