"""IFD (Instruction-Following Difficulty): how much the instruction helps the model predict the response.

Cherry LLM (Li et al., 2023) defines IFD from the response's loss with and without the instruction;
Superfiltering (Li et al., 2024) shows a GPT-2-size "weak" model ranks rows almost like a 7B model.
High IFD (but below 1) marks a row whose response the instruction explains poorly, i.e. a hard,
informative row; IFD >= 1 means the instruction does not help at all (often a misaligned pair).

``convention=`` picks how rows are encoded: ``exact`` (the library's encoding, the default) or a paper's
script (``superfiltering``, ``cherry``; see :mod:`hf_prospector.encoders.papers`). The columns mean the same
under every convention; Superfiltering ranks by ``ifd``, Cherry LLM by ``ifd_loss``.
"""

from __future__ import annotations

import math

import numpy as np
from datasets import Features, Value

from ..encoders import make_encoder, resolve_settings
from ..engine import Engine, Request
from ..utils import require_int
from .base import Scorer, within_window

IFD_FEATURES = Features({**{c: Value("float64") for c in ("ppl_cond", "ppl_uncond", "ifd", "ifd_loss", "loss_cond",
                                                          "loss_uncond")},
                         "n_response_tokens": Value("int64"), "ifd_note": Value("string")})
IFD_COLUMNS = tuple(IFD_FEATURES)


class IFDScorer(Scorer):
    """Adds ``ppl_cond``, ``ppl_uncond``, ``ifd`` (= ppl_cond / ppl_uncond, Superfiltering),
    ``ifd_loss`` (= loss_cond / loss_uncond, Cherry), ``loss_cond``, ``loss_uncond`` (mean token NLL of the
    response), ``n_response_tokens`` and ``ifd_note`` (empty when the score is sound).

    >>> ds = ds.map(IFDScorer(), batched=True)
    """

    features = IFD_FEATURES

    def __init__(self, model: str | None = None, *, convention: str = "exact", template: str | None = None,
                 max_length: int | None = None, min_response_tokens: int | None = None, **kwargs):
        """``template``, ``max_length`` and ``min_response_tokens`` default to the convention's own (exact:
        ``plain``, 1024, 16; superfiltering: ``plain``, 1024; cherry: ``alpaca``, 512). A paper convention
        fixes its template, so another ``template=`` is an error."""
        if max_length is not None:
            require_int("max_length", max_length, 2)
        if min_response_tokens is not None:
            require_int("min_response_tokens", min_response_tokens, 0)
        self.convention = convention
        self.template, self.max_length, self.min_response_tokens = resolve_settings(
            convention, template, max_length, min_response_tokens)
        super().__init__(model, **kwargs)

    def settings(self):
        return {**super().settings(), "convention": self.convention, "template": self.template,
                "max_length": self.max_length, "min_response_tokens": self.min_response_tokens}

    def build_encoder(self, engine: Engine):
        max_length, budget = within_window(self.max_length, engine)
        return make_encoder("ifd", self.convention, engine.tokenizer, template=self.template, max_length=max_length,
                            min_response_tokens=self.min_response_tokens, budget=budget)

    def score_examples(self, examples, engine: Engine) -> dict[str, list]:
        encoded = self.encoder(engine).encode_many(examples)
        scorable = [k for k, e in enumerate(encoded) if e.cond is not None]
        requests = [Request(encoded[k].cond, encoded[k].cond_start) for k in scorable]
        requests += [Request(encoded[k].uncond, encoded[k].uncond_start) for k in scorable]
        logprobs = engine.logprobs(requests)
        out = {c: [] for c in self.score_columns}
        losses = {k: (-float(np.mean(logprobs[j])), -float(np.mean(logprobs[j + len(scorable)])))
                  for j, k in enumerate(scorable)}
        for k, enc in enumerate(encoded):
            cond, uncond = losses.get(k, (math.nan, math.nan))
            row = ifd_row(cond, uncond, enc.n_response_tokens, enc.note)
            for c in self.score_columns:
                out[c].append(row[c])
        return out


def ifd_row(loss_cond: float, loss_uncond: float, n_tokens: int, note: str) -> dict:
    """The IFD columns of one row from its two mean losses (NaN losses give NaN scores)."""
    ifd = ifd_loss = math.nan
    if not math.isnan(loss_cond):
        if loss_uncond > 0:
            ifd, ifd_loss = math.exp(loss_cond - loss_uncond), loss_cond / loss_uncond
        else:
            note = "; ".join(filter(None, [note, "NaN: the response alone has zero loss, so the ratio is undefined"]))
    return {"ppl_cond": math.exp(loss_cond) if not math.isnan(loss_cond) else math.nan,
            "ppl_uncond": math.exp(loss_uncond) if not math.isnan(loss_uncond) else math.nan,
            "ifd": ifd, "ifd_loss": ifd_loss, "loss_cond": loss_cond, "loss_uncond": loss_uncond,
            "n_response_tokens": n_tokens, "ifd_note": note}
