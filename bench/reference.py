"""The papers' procedures as their public scripts run them: the baselines the bench scripts time.

Written from the scripts, not from the library (only the weights come from ``load_causal_lm``):

* Superfiltering (tianyi-lab/Superfiltering ``code_ifd/data_analysis.py``): one row at a time, two
  forward passes per row in float32, full logits at every position, the model's own loss
  (``model(input_ids, labels=...)``). The per-row function is ``superfiltering_row`` in
  ``paper_reference.py`` beside this file, shared with the tests that check the ``superfiltering``
  convention against it; this module runs it over a list of rows, as the script's loop does.
* NUGGETS (pldlgb/nuggets ``instruction_main.py``, ``--kv_iter 1``): a zero-shot pass over the task
  set, then one candidate at a time: the candidate's key/value cache from one forward pass, expanded
  over a batch of tasks right-padded to 200 tokens, full logits and log-softmax at every position,
  sums of the answer tokens' log-probabilities, and the golden score = share of tasks whose one-shot
  sum is strictly higher than the zero-shot one.

One departure from NUGGETS: the script adds a ``[PAD]`` token (resizing the vocabulary) for its
padding; here the tokenizer's own pad (or end-of-text) token pads. Padding only sits after every
scored position of a causal model, so it cannot change a score, while a new vocabulary entry would
shift every log-softmax slightly.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from transformers import DynamicCache

from paper_reference import superfiltering_row

NUGGETS_TASK_TOKENS = 200  # TokenizedForGenRightPad.max_length


def superfiltering_losses(model, tokenizer, rows: list[dict], max_length: int = 1024) -> list[dict]:
    """``{"loss_cond", "loss_uncond"}`` per row, one row (two forward passes) at a time."""
    return [superfiltering_row(model, tokenizer, row, max_length) for row in rows]


def nuggets_prompt(row: dict) -> tuple[str, str]:
    """tasks/alpaca.py: fields stripped, the ``sp`` prompt; returns (query, query + output)."""
    instruction, input_, output = row["instruction"].strip(), row["input"].strip(), row["output"].strip()
    if input_ != "":
        query = f"Instruction:\n{instruction}\nInput:\n{input_}\nResponse:\n"
    else:
        query = f"Instruction:\n{instruction}\nResponse:\n"
    return query, f"{query}{output}"


def _task_batches(tokenizer, tasks: list[dict], batch_size: int):
    """TokenizedForGenRightPad + DataLoader: (ids [B, 200], mask [B, 200], choice starts, choice ends)."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    encoded = []
    for row in tasks:
        query, full = nuggets_prompt(row)
        ids = tokenizer(full, add_special_tokens=False)["input_ids"][:NUGGETS_TASK_TOKENS]
        n = len(ids)
        ids = ids + [pad] * (NUGGETS_TASK_TOKENS - n)
        mask = [1] * n + [0] * (NUGGETS_TASK_TOKENS - n)
        start = len(tokenizer(query, add_special_tokens=False)["input_ids"])
        end = len(tokenizer(full, add_special_tokens=False)["input_ids"])
        encoded.append((ids, mask, start, end))
    for s in range(0, len(encoded), batch_size):
        chunk = encoded[s:s + batch_size]
        yield (torch.tensor([e[0] for e in chunk]), torch.tensor([e[1] for e in chunk]),
               [e[2] for e in chunk], [e[3] for e in chunk])


def _answer_sums(logits: torch.Tensor, ids: torch.Tensor, starts, ends) -> list[float]:
    """do_infer_probs: log-softmax over the whole vocabulary at every position, then the answer's sum."""
    logprobs = F.log_softmax(logits, dim=-1)
    sums = []
    for row_ids, start, end, row_logprobs in zip(ids, starts, ends, logprobs):
        tokens = row_ids[start:end].unsqueeze(1)
        extracted = torch.gather(row_logprobs[start - 1:end - 1], -1, tokens).squeeze(-1)
        sums.append(torch.sum(extracted).item())
    return sums


@torch.no_grad()
def nuggets_golden_scores(model, tokenizer, candidates: list[dict], tasks: list[dict],
                          batch_size: int = 10) -> np.ndarray:
    """The golden score of each candidate against ``tasks`` (zero-shot pass included)."""
    batches = list(_task_batches(tokenizer, tasks, batch_size))
    zero = []
    for ids, mask, starts, ends in batches:  # do_infer_probs_zero
        zero += _answer_sums(model(input_ids=ids, attention_mask=mask).logits, ids, starts, ends)
    scores = []
    for row in candidates:
        exemplar = torch.tensor([tokenizer(nuggets_prompt(row)[1])["input_ids"]])  # default special tokens
        # AttnOptimWrapper.step with kv_iter=1: the plain cache of one forward pass (full logits, unused).
        exemplar_kv = model(input_ids=exemplar, attention_mask=torch.ones_like(exemplar),
                            use_cache=True).past_key_values
        layers = [(layer.keys, layer.values) for layer in exemplar_kv.layers]
        one = []
        for ids, mask, starts, ends in batches:  # do_infer_probs
            bs = len(ids)
            cache = DynamicCache()
            for i, (k, v) in enumerate(layers):
                cache.update(k.expand(bs, -1, -1, -1), v.expand(bs, -1, -1, -1), i)
            merged_mask = torch.cat((torch.ones(bs, exemplar.shape[1], dtype=mask.dtype), mask), dim=1)
            logits = model(input_ids=ids, attention_mask=merged_mask, past_key_values=cache).logits
            one += _answer_sums(logits, ids, starts, ends)
        scores.append(float(np.sum(np.greater(one, zero)) / len(zero)))
    return np.array(scores)
