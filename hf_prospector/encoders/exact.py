"""Exact encoding: token ids for the conditioned and the unconditioned pass of one row.

The context and the response are tokenized *separately* and their ids joined, so the response's ids
are identical in both passes and no token merges across the boundary. Both passes start with the
tokenizer's BOS when it defines one, even if it does not add it by itself (SmolLM2 defines
``<|im_start|>`` and adds nothing), so the first response token is scored in both passes. With the
``chat`` template the chat markup's own special tokens stand in for BOS; the unconditioned pass then
starts with the template's assistant header (its generation prompt). A tokenizer without a chat template
is refused for ``chat`` with what to use instead.

A tokenizer with no BOS (and no chat header) leaves no position from which to predict the first
response token of the unconditioned pass; that token is then left unscored in *both* passes, so the two
losses cover the same tokens.

Budget: the conditioned sequence holds at most ``max_length`` tokens. The context is kept whole when it
fits and the response is cut at its tail; when the context would leave fewer than
``min_response_tokens`` for the response (or the whole response, if shorter), the context is cut from
the left. ``min_response_tokens=0`` never cuts the context: a row whose context fills the budget then
gets NaN scores with that reason.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..formats import Example
from .base import Encoder, register

TEMPLATES = ("plain", "alpaca", "chat")
DEFAULT_TEMPLATE = "plain"
DEFAULT_MIN_RESPONSE_TOKENS = 16

# The Stanford Alpaca prompts (tatsu-lab/stanford_alpaca, train.py PROMPT_DICT).
ALPACA_PROMPT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)
ALPACA_PROMPT_NO_INPUT = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:\n"
)


def render_context(example: Example, template: str, tokenizer=None) -> str:
    """The context text of ``example`` under ``template`` (everything the response is conditioned on)."""
    if template == "plain":
        # Superfiltering: "instruction\n" plus "input\n" when present; chat turns one per line.
        return "".join(m["content"] + "\n" for m in example.messages)
    if template == "alpaca":
        # Chat rows: the last user turn is the instruction and the earlier turns become the input.
        input_ = example.input or "\n".join(m["content"] for m in example.messages[:-1])
        prompt = ALPACA_PROMPT if input_ else ALPACA_PROMPT_NO_INPUT
        return prompt.format(instruction=example.instruction, input=input_)
    if template == "chat":
        require_chat_template(tokenizer)
        return chat_text(tokenizer, example.messages, prompt=True)
    raise ValueError(f"unknown template {template!r}; choose one of {TEMPLATES}")


def require_chat_template(tokenizer) -> None:
    """A clear error, with what to do, when ``template='chat'`` is asked of a tokenizer that has no chat template."""
    if tokenizer is None or not getattr(tokenizer, "chat_template", None):
        name = getattr(tokenizer, "name_or_path", "") or "this model"
        raise ValueError(f"template='chat' needs a chat template, and the tokenizer of {name} has none (a base model's "
                         "usually has none): use template='plain' or 'alpaca' with it, or a chat (instruct) model "
                         "with template='chat'")


def chat_text(tokenizer, messages: list[dict], prompt: bool) -> str:
    """``messages`` rendered by the tokenizer's chat template; ``prompt`` adds the assistant header after them."""
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=prompt)


# A user/assistant exchange whose rendering shows where a chat template puts its markup.
PROBE_EXCHANGE = [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]


def _not_turn_by_turn(tokenizer) -> ValueError:
    return ValueError(f"the chat template of {tokenizer.name_or_path or 'this tokenizer'} does not render a "
                      "conversation as its turns one after another, so a one-shot exchange cannot precede a task "
                      "under it; use template='plain' or 'alpaca'")


def _after(text: str, prefix: str, tokenizer) -> str:
    if not text.startswith(prefix):
        raise _not_turn_by_turn(tokenizer)
    return text[len(prefix):]


def turn_end(tokenizer) -> str:
    """The markup a chat template puts after an assistant turn's text (before the next turn)."""
    return _after(chat_text(tokenizer, PROBE_EXCHANGE, prompt=False),
                  chat_text(tokenizer, PROBE_EXCHANGE[:1], prompt=True) + PROBE_EXCHANGE[1]["content"], tokenizer)


def chat_continuation(tokenizer, messages: list[dict]) -> tuple[str, str]:
    """``(turns, opening)``: ``messages`` as the chat template renders them after an earlier exchange (with the
    assistant header), and what it puts before them when they open a conversation (e.g. BOS, a default system
    turn), so that ``opening + turns`` is ``messages`` rendered alone."""
    turns = _after(chat_text(tokenizer, PROBE_EXCHANGE + messages, prompt=True),
                   chat_text(tokenizer, PROBE_EXCHANGE, prompt=False), tokenizer)
    alone = chat_text(tokenizer, messages, prompt=True)
    if not alone.endswith(turns):
        raise _not_turn_by_turn(tokenizer)  # they render otherwise when they open the conversation
    return turns, alone[:len(alone) - len(turns)]


def assistant_header(tokenizer) -> str:
    """The markup a chat template puts before an assistant turn (the generation prompt)."""
    probe = [{"role": "user", "content": "x"}]
    with_header = tokenizer.apply_chat_template(probe, tokenize=False, add_generation_prompt=True)
    without = tokenizer.apply_chat_template(probe, tokenize=False, add_generation_prompt=False)
    return with_header[len(without):] if with_header.startswith(without) else ""


@dataclass
class EncodedRow:
    """Ids of both passes. Positions ``start..len-1`` of each sequence are scored (predicted from the left).

    ``cond`` is None when the row cannot be scored; ``note`` then says why.
    """

    cond: list[int] | None
    cond_start: int
    uncond: list[int] | None
    uncond_start: int
    n_response_tokens: int
    note: str = ""


@register("ifd", "exact")
class PairEncoder(Encoder):
    """Encodes examples for IFD-style scoring under one tokenizer, template and budget."""

    default_max_length = 1024

    def __init__(self, tokenizer, template: str = DEFAULT_TEMPLATE, max_length: int = 1024,
                 min_response_tokens: int = DEFAULT_MIN_RESPONSE_TOKENS, budget: str | None = None):
        """``budget`` names the limit in notes (default ``max_length=N``; the scorers name the model's window when
        it is the smaller)."""
        if template not in TEMPLATES:
            raise ValueError(f"unknown template {template!r}; choose one of {TEMPLATES}")
        super().__init__(tokenizer)
        self.template = template
        self.max_length = max_length
        self.budget = budget or f"max_length={max_length}"
        self.min_response_tokens = min_response_tokens
        if template == "chat":
            require_chat_template(tokenizer)
            self.cond_prefix: list[int] = []
            self.uncond_prefix = self.ids(assistant_header(tokenizer)) or self.bos
        else:
            self.cond_prefix = self.uncond_prefix = self.bos

    def encode(self, example: Example) -> EncodedRow:
        return self.encode_many([example])[0]

    def encode_many(self, examples: list[Example]) -> list[EncodedRow]:
        """``encode`` of each example, with one tokenizer call for all contexts and one for all responses: a
        fast tokenizer then works through the texts in parallel, not one Python call per text."""
        scorable = [k for k, e in enumerate(examples) if e.response.strip()]
        responses = self.ids_many([examples[k].response for k in scorable])
        contexts = self.ids_many([render_context(examples[k], self.template, self.tokenizer) for k in scorable])
        out = [EncodedRow(None, 0, None, 0, 0, e.nan_note()) for e in examples]
        for k, context, response in zip(scorable, contexts, responses):
            out[k] = self.encode_ids(context, response)
        return out

    def encode_ids(self, context: list[int], response: list[int]) -> EncodedRow:
        notes = []
        room = self.max_length - len(self.cond_prefix)
        need = min(self.min_response_tokens, len(response))
        if len(context) + need > room and self.min_response_tokens > 0:
            keep = max(room - need, 0)
            notes.append(f"context cut from the left to {keep} of {len(context)} tokens by {self.budget}")
            context = context[len(context) - keep:] if keep else []
        if room - len(context) <= 0:
            return EncodedRow(None, 0, None, 0, 0,
                              f"NaN: context of {len(context)} tokens leaves no room for the response "
                              f"within {self.budget}")
        if len(response) > room - len(context):
            notes.append(f"response cut to {room - len(context)} of {len(response)} tokens by {self.budget}")
            response = response[: room - len(context)]
        # Without a prefix token the first response token has no left neighbour in the unconditioned
        # pass; skip it in both passes so the two losses cover the same tokens.
        skip = 0 if self.uncond_prefix else 1
        if len(response) - skip <= 0:
            return EncodedRow(None, 0, None, 0, 0, "NaN: no response token can be scored (no BOS and a 1-token response)")
        cond = self.cond_prefix + context + response
        uncond = self.uncond_prefix + response
        return EncodedRow(cond, len(cond) - len(response) + skip, uncond, len(self.uncond_prefix) + skip,
                          len(response) - skip, "; ".join(notes))
