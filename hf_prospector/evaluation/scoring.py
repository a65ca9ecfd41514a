"""Evaluation loss with the library's engine: the mean token loss of each reference response given its instruction,
computed as :class:`~hf_prospector.scorers.IFDScorer` computes ``loss_cond`` (same encoding, same engine)."""

from __future__ import annotations

import numpy as np

from ..engine import Engine, Request
from .data import EncodedSet


def eval_losses(engine: Engine, encoded: EncodedSet) -> np.ndarray:
    """Per usable row, the mean negative log-likelihood of its response tokens (float64)."""
    logprobs = engine.logprobs([Request(ids, start) for ids, start in zip(encoded.ids, encoded.starts)])
    return np.array([-float(np.mean(lp)) for lp in logprobs], dtype=np.float64)
