"""The papers' IFD scripts, re-written straightforwardly: one row per forward pass, the model's own loss.

Written from the scripts, not from the library, to check :mod:`hf_prospector.encoders.papers` against
(tests) and to time it against (bench):

* Superfiltering, tianyi-lab/Superfiltering ``code_ifd/data_analysis.py`` (two losses per row) and
  ``put_analysis_to_data.py`` (``ifd_ppl = ppl_condition / ppl_direct``);
* Cherry LLM, tianyi-lab/Cherry_LLM ``cherry_seletion/data_analysis.py --mod cherry --prompt alpaca``
  (per-token losses) and ``data_by_IFD.py`` (response spans, skips, ``mean_2 / mean_1``), with the
  latest upstream ``+4`` budget.

Each function takes one Alpaca row (a dict with ``instruction``, ``output`` and maybe ``input``) and
returns ``{"loss_cond", "loss_uncond"}``: the two mean response losses, NaN where the script gives no
score or skips the row. IFD is then ``exp(loss_cond - loss_uncond)`` (Superfiltering) or
``loss_cond / loss_uncond`` (Cherry).
"""

from __future__ import annotations

import math

import torch

NAN_ROW = {"loss_cond": math.nan, "loss_uncond": math.nan}

# Superfiltering's PROMPT_DICT_NONE.
SUPERFILTERING_PROMPT = {"prompt_input": "{instruction}\n{input}\n", "prompt_no_input": "{instruction}\n"}

# Cherry LLM's PROMPT_DICT: Stanford Alpaca's, ending in "### Response:" with no newline.
CHERRY_PROMPT = {
    "prompt_input": (
        "Below is an instruction that describes a task, paired with an input that provides further context. "
        "Write a response that appropriately completes the request.\n\n"
        "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:"
    ),
    "prompt_no_input": (
        "Below is an instruction that describes a task. "
        "Write a response that appropriately completes the request.\n\n"
        "### Instruction:\n{instruction}\n\n### Response:"
    ),
}


def prompt(templates: dict, row: dict) -> str:
    input_i = row["input"] if "input" in row.keys() else ""
    if input_i == "":
        return templates["prompt_no_input"].format_map({"instruction": row["instruction"]})
    return templates["prompt_input"].format_map({"instruction": row["instruction"], "input": input_i})


@torch.no_grad()
def superfiltering_row(model, tokenizer, row: dict, max_length: int = 1024) -> dict:
    """Superfiltering's losses of one row: ``loss_cond`` masks the prompt, ``loss_uncond`` is the output alone."""
    output_i = row["output"]
    prompt_i = prompt(SUPERFILTERING_PROMPT, row)
    whole_text = prompt_i + output_i
    instruct_len = tokenizer.encode(prompt_i, return_tensors="pt", truncation=True, max_length=max_length).shape[1]
    if output_i == "":
        return dict(NAN_ROW)  # the script writes {} and the IFD becomes NaN

    # get_perplexity_and_embedding_whole_text
    input_ids = tokenizer.encode(output_i, return_tensors="pt", truncation=True,
                                 max_length=max_length - instruct_len + 1).to(model.device)
    loss_alone = model(input_ids, labels=input_ids.contiguous()).loss.item()

    # get_perplexity_and_embedding_part_text
    input_ids = tokenizer.encode(whole_text, return_tensors="pt", truncation=True,
                                 max_length=max_length).to(model.device)
    start_token = len(tokenizer.encode(whole_text[:whole_text.rfind(output_i)]))
    labels = input_ids.clone()
    labels[0, :start_token] = -100
    loss_condition = model(input_ids, labels=labels).loss.item()
    return {"loss_cond": loss_condition, "loss_uncond": loss_alone}


@torch.no_grad()
def _token_losses(model, tokenizer, text: str, max_length: int) -> list[float]:
    """data_analysis.py: the NLL of every token after the first (``losses[k]`` is token ``k + 1``'s)."""
    input_ids = tokenizer.encode(text, return_tensors="pt", truncation=True, max_length=max_length)
    logits = model(input_ids).logits
    losses = []
    for i in range(1, input_ids.shape[1]):
        log_prob_dist = torch.log_softmax(logits[0, i - 1], dim=-1)
        losses.append(torch.nn.functional.nll_loss(log_prob_dist.unsqueeze(0), input_ids[0, i].unsqueeze(0)).item())
    return losses


def _loss_part_text(tokenizer, text: str, target_span: str, max_length: int, loss_list: list[float]):
    """data_by_IFD.py's get_loss_part_text: the response's length and token losses."""
    input_ids = tokenizer.encode(text, return_tensors="pt", truncation=True, max_length=max_length)
    start_token = len(tokenizer.encode(text[:text.rfind(target_span)]))
    end_token_real = input_ids.shape[1]
    return end_token_real - start_token, loss_list[start_token - 1:end_token_real - 1]


def cherry_row(model, tokenizer, row: dict, max_length: int = 512) -> dict:
    """Cherry LLM's mean response losses of one row, NaN where ``data_by_IFD.py`` skips it (IFD > 1 is kept)."""
    output_i = row["output"]
    prompt_i = prompt(CHERRY_PROMPT, row)
    whole_text = prompt_i + output_i
    direct_answer_text = "### Response:" + output_i
    instruct_len = tokenizer.encode(prompt_i, return_tensors="pt", truncation=True, max_length=max_length).shape[1]
    if not max_length - instruct_len > 0:
        return dict(NAN_ROW)
    budget_1 = max_length - instruct_len + 4
    len_1, losses_1 = _loss_part_text(tokenizer, direct_answer_text, output_i, budget_1,
                                      _token_losses(model, tokenizer, direct_answer_text, budget_1))
    len_2, losses_2 = _loss_part_text(tokenizer, whole_text, output_i, max_length,
                                      _token_losses(model, tokenizer, whole_text, max_length))
    if len_1 <= 0 or len_2 <= 0:
        return dict(NAN_ROW)
    if instruct_len + len_1 > max_length:
        return dict(NAN_ROW)
    return {"loss_cond": sum(losses_2) / len(losses_2), "loss_uncond": sum(losses_1) / len(losses_1)}
