"""IFD (Instruction-Following Difficulty): how much the instruction helps the model predict the response.

Cherry LLM (Li et al., 2023) defines IFD from the response's loss with and without the instruction;
Superfiltering (Li et al., 2024) shows a GPT-2-size "weak" model ranks rows almost like a 7B model.
High IFD (but below 1) marks a row whose response the instruction explains poorly, i.e. a hard,
informative row; IFD >= 1 means the instruction does not help at all (often a misaligned pair).

``convention=`` picks how rows are encoded: ``exact`` (the library's encoding, the default) or a paper's
script (``superfiltering``, ``cherry``; see :mod:`hf_prospector.encoders.papers`). The columns mean the same
under every convention; Superfiltering ranks by ``ifd``, Cherry LLM by ``ifd_loss``.

``turn="all"`` scores every assistant turn of a conversation, each with everything before it as its context:
the row's losses are then means over all its scored response tokens (so ``ifd`` keeps its meaning), and
list columns (``ifd_turns``, ``n_response_tokens_turns``, ...) hold each turn's own values.
"""

from __future__ import annotations

import math

import numpy as np
from datasets import Features, List, Value

from ..encoders import make_encoder, resolve_settings
from ..engine import Engine, Request
from ..utils import require_int
from .base import Scorer, within_window

IFD_FEATURES = Features({**{c: Value("float64") for c in ("ppl_cond", "ppl_uncond", "ifd", "ifd_loss", "loss_cond",
                                                          "loss_uncond")},
                         "n_response_tokens": Value("int64"), "ifd_note": Value("string")})
IFD_COLUMNS = tuple(IFD_FEATURES)
# turn="all": one value per assistant turn of the row, in order (NaN and 0 tokens for a turn not scored).
IFD_TURN_FEATURES = Features({**{f"{c}_turns": List(Value("float64")) for c in ("ifd", "ifd_loss", "loss_cond",
                                                                                "loss_uncond")},
                              "n_response_tokens_turns": List(Value("int64"))})


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
        if self.turn == "all":
            self.features = Features({**IFD_FEATURES, **IFD_TURN_FEATURES})

    def settings(self):
        return {**super().settings(), "convention": self.convention, "template": self.template,
                "max_length": self.max_length, "min_response_tokens": self.min_response_tokens}

    def build_encoder(self, engine: Engine):
        max_length, budget = within_window(self.max_length, engine)
        return make_encoder("ifd", self.convention, engine.tokenizer, template=self.template, max_length=max_length,
                            min_response_tokens=self.min_response_tokens, budget=budget)

    def score_examples(self, examples, engine: Engine) -> dict[str, list]:
        if self.turn == "all":
            return self.score_turns(examples, engine)
        encoded = self.encoder(engine).encode_many(examples)
        logprobs = pair_logprobs(encoded, engine)
        out = {c: [] for c in self.score_columns}
        losses = {k: (-float(np.mean(cond)), -float(np.mean(uncond))) for k, (cond, uncond) in logprobs.items()}
        for k, enc in enumerate(encoded):
            cond, uncond = losses.get(k, (math.nan, math.nan))
            row = ifd_row(cond, uncond, enc.n_response_tokens, enc.note)
            for c in self.score_columns:
                out[c].append(row[c])
        return out

    def score_turns(self, examples, engine: Engine) -> dict[str, list]:
        """``turn="all"``: every assistant turn of every row, in one engine call. A row's losses are the means over
        the tokens of all its scored turns (token-weighted); a row of one turn scores as under ``turn="last"``."""
        turns = [ex.scored_turns() for ex in examples]
        encoded = self.encoder(engine).encode_many([t for row in turns for t in row])
        logprobs = pair_logprobs(encoded, engine)
        out = {c: [] for c in self.score_columns}
        end = 0
        for row in turns:
            ids = range(end, end + len(row))
            end += len(row)
            each = [ifd_row(*(-float(np.mean(lp)) for lp in logprobs.get(j, ([math.nan], [math.nan]))),
                            encoded[j].n_response_tokens, encoded[j].note) for j in ids]
            scored = [logprobs[j] for j in ids if j in logprobs]
            cond, uncond = ((-float(np.mean(np.concatenate([lp[side] for lp in scored]))) for side in (0, 1))
                            if scored else (math.nan, math.nan))
            notes = [encoded[j].note for j in ids]
            if len(row) > 1:  # which turn was cut, or lost its score
                notes = [f"turn {t.position}: {note}" for t, note in zip(row, notes) if note]
            combined = ifd_row(cond, uncond, sum(t["n_response_tokens"] for t in each), "; ".join(filter(None, notes)))
            for c in IFD_COLUMNS:
                out[c].append(combined[c])
            for c in IFD_TURN_FEATURES:
                out[c].append([t[c.removesuffix("_turns")] for t in each])
        return out


def pair_logprobs(encoded: list, engine: Engine) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Each scorable encoded row's response log-probs, (conditioned, unconditioned), from one engine call."""
    scorable = [k for k, e in enumerate(encoded) if e.cond is not None]
    requests = [Request(encoded[k].cond, encoded[k].cond_start) for k in scorable]
    requests += [Request(encoded[k].uncond, encoded[k].uncond_start) for k in scorable]
    logprobs = engine.logprobs(requests)
    return {k: (logprobs[j], logprobs[j + len(scorable)]) for j, k in enumerate(scorable)}


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
