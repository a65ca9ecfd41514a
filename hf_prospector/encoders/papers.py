"""Paper conventions: encode a row the way a paper's public script does, so its numbers come out.

The library's own encoding (``exact``, :mod:`hf_prospector.encoders.exact`) tokenizes context and response
separately and scores every response token in both passes. The papers' scripts do otherwise, and their
rankings differ from it (Spearman about 0.93 on real rows), so citing a paper's subset needs the
paper's procedure. Each convention here is an encoder with the same ``encode(example) -> EncodedRow``
as :class:`~hf_prospector.encoders.exact.PairEncoder`; the engine and the IFD arithmetic do not change, and
neither do the column meanings (``ifd`` is the perplexity ratio, ``ifd_loss`` the loss ratio).

* ``superfiltering``: tianyi-lab/Superfiltering ``code_ifd/data_analysis.py`` (Li et al., 2024).
  Superfiltering ranks by ``ifd``.
* ``cherry``: tianyi-lab/Cherry_LLM ``cherry_seletion/data_analysis.py`` and ``data_by_IFD.py``
  (Li et al., 2024, "From Quantity to Quality"). Cherry ranks by ``ifd_loss``.

Both tokenize as the scripts do: ``tokenizer(text)`` with the tokenizer's own special tokens (GPT-2 and
SmolLM2 add none, LLaMA adds ``<s>``), truncation at the right with the scripts' budgets, and the
response span found by tokenizing the text before the response alone. A row the script would skip
or score as NaN gets NaN and an ``ifd_note`` that says why. Where the scripts would merely produce a
NaN loss (no target left), the whole row is NaN here, ``loss_cond`` included.

Choices of ours, where the scripts say nothing: a missing or None ``input`` counts as empty; chat rows
(ShareGPT, messages) fill the prompt as the ``plain`` and ``alpaca`` templates of
:func:`~hf_prospector.encoders.exact.render_context` do (turns one per line; last user turn = instruction,
earlier turns = input); ``n_response_tokens`` counts the response tokens scored in the conditioned
pass (the two passes may score different counts, as in the scripts).
"""

from __future__ import annotations

from ..formats import Example
from .base import Encoder, encoder_class, register
from .exact import DEFAULT_MIN_RESPONSE_TOKENS, DEFAULT_TEMPLATE, TEMPLATES, EncodedRow, render_context


def resolve_settings(convention: str, template: str | None, max_length: int | None,
                     min_response_tokens: int | None) -> tuple[str, int, int | None]:
    """``(template, max_length, min_response_tokens)`` of an IFD ``convention``; None means the convention's default.

    A paper convention fixes its template (another one is an error) and never cuts the context, so
    ``min_response_tokens`` is an error there too; ``max_length`` may be changed.
    """
    cls = encoder_class("ifd", convention)
    max_length = cls.default_max_length if max_length is None else max_length
    if cls.fixed_template is None:
        template = DEFAULT_TEMPLATE if template is None else template
        if template not in TEMPLATES:
            raise ValueError(f"unknown template {template!r}; choose one of {TEMPLATES}")
        return template, max_length, DEFAULT_MIN_RESPONSE_TOKENS if min_response_tokens is None else min_response_tokens
    if template is not None and template != cls.fixed_template:
        raise ValueError(f"convention={convention!r} uses template {cls.fixed_template!r}, but template={template!r} "
                         f"was given; drop template= or use convention='exact' to choose the template")
    if min_response_tokens is not None:
        raise ValueError(f"min_response_tokens applies to convention='exact' only; the {convention} script never "
                         f"cuts the context (drop min_response_tokens=)")
    return cls.fixed_template, max_length, None


def unscorable(note: str) -> EncodedRow:
    """A row the convention cannot score: NaN scores, ``note`` says why."""
    return EncodedRow(None, 0, None, 0, 0, note)


class ScriptEncoder(Encoder):
    """Tokenization as the scripts call it: ``tokenizer.encode(text, truncation=True, max_length=...)``."""

    def __init__(self, tokenizer, template: str | None = None, max_length: int | None = None,
                 min_response_tokens: int | None = None, budget: str | None = None):
        """The arguments every IFD encoder takes (see :func:`resolve_settings`): the script fixes the template and
        never cuts the context."""
        if template not in (None, self.fixed_template) or min_response_tokens is not None:
            raise ValueError(f"{type(self).__name__} uses template {self.fixed_template!r} and never cuts the context; "
                             f"got template={template!r}, min_response_tokens={min_response_tokens!r}")
        super().__init__(tokenizer)
        self.max_length = self.default_max_length if max_length is None else max_length
        self.budget = budget or f"max_length={self.max_length}"

    def tokens(self, text: str, max_length: int | None = None) -> list[int]:
        """``encode(text)`` with the tokenizer's default special tokens, cut to ``max_length`` when given."""
        return self.ids(text, special=True, max_length=max_length)

    def encode_many(self, examples: list[Example]) -> list[EncodedRow]:
        """Row by row, as the scripts tokenize (several dependent calls per row)."""
        return [self.encode(e) for e in examples]

    def response_span(self, text: str, response: str, max_length: int) -> tuple[list[int], int, bool]:
        """The scripts' ``part_text``: ids of ``text`` cut to ``max_length``, where the response starts, and
        whether ``text`` was cut.

        The start is the length of ``encode(text[:text.rfind(response)])``, uncut and with special tokens.
        """
        ids = self.tokens(text)
        cut = len(ids) > max_length
        if cut:  # truncating only changes a text that is too long; a second call keeps it literal
            ids = self.tokens(text, max_length)
        return ids, len(self.tokens(text[:text.rfind(response)])), cut


@register("ifd", "superfiltering")
class SuperfilteringEncoder(ScriptEncoder):
    """Superfiltering's ``code_ifd/data_analysis.py`` (``--prompt none``, GPT-2, ``max_length`` 1024).

    Prompt ``P = "{instruction}\\n"`` (plus ``"{input}\\n"`` when the input is not empty); the conditioned
    pass is ``encode(P + output)`` cut to ``L``, scored from the first response token (labels -100 on the
    ``len(encode(P))`` prompt positions). The unconditioned pass is ``encode(output)`` cut to
    ``L - len(encode(P, max_length=L)) + 1``, with ``labels = input_ids``: its position 0 is never scored,
    so without BOS the first response token is left out of that pass only.
    """

    fixed_template = "plain"
    default_max_length = 1024  # Superfiltering's default; its scripts use GPT-2

    def encode(self, example: Example) -> EncodedRow:
        output = example.response
        if output == "":
            return unscorable(example.nan_note())
        prompt = render_context(example, "plain")
        n_prompt = len(self.tokens(prompt, self.max_length))
        cond, start, cut = self.response_span(prompt + output, output, self.max_length)
        if start >= len(cond):
            return unscorable(f"NaN: the prompt ({start} tokens) leaves no response token "
                              f"within {self.budget}")
        uncond = self.tokens(output, self.max_length - n_prompt + 1)
        if len(uncond) < 2:
            return unscorable("NaN: the response alone is one token, which the script's "
                              "unconditioned pass cannot score (nothing before it)")
        note = f"response cut to {len(cond) - start} tokens by {self.budget}" if cut else ""
        return EncodedRow(cond, start, uncond, 1, len(cond) - start, note)


@register("ifd", "cherry")
class CherryEncoder(ScriptEncoder):
    """Cherry LLM's ``data_analysis.py --mod cherry --prompt alpaca`` and ``data_by_IFD.py`` (latest upstream).

    Prompt ``P`` = the Stanford Alpaca prompt ending in ``"### Response:"`` with no newline, joined to the
    output directly. Conditioned pass: ``encode(P + output)`` cut to ``L``; unconditioned pass:
    ``encode("### Response:" + output)`` cut to ``L - n_p + 4`` (``n_p = len(encode(P, max_length=L))``);
    in both the response tokens are scored from the first one on. The ``+4`` is literal: it counts
    LLaMA's ``<s> ### Response :``; with a header of another length the two passes keep different numbers
    of response tokens when the response is cut, exactly as the scripts would. (The stored
    ``data_analysis.py`` still has the older ``-2`` budget; its later forks and ``data_by_IFD.py`` use
    ``+4``.) Rows ``data_by_IFD.py`` skips get NaN: ``L - n_p <= 0``, no response token in a pass, or
    ``n_p + len_1 > L``. Rows with IFD above 1 keep their scores; dropping them is the selection's job.
    """

    fixed_template = "alpaca"
    default_max_length = 512  # the Cherry README's --max_length 512
    HEADER = "### Response:"
    HEADER_BUDGET = 4

    def encode(self, example: Example) -> EncodedRow:
        output = example.response
        if output == "":
            return unscorable(example.nan_note())
        # Cherry's PROMPT_DICT is the Stanford Alpaca prompt without the newline after "### Response:".
        prompt = render_context(example, "alpaca").removesuffix("\n")
        n_prompt = len(self.tokens(prompt, self.max_length))
        if self.max_length - n_prompt <= 0:
            return unscorable(f"NaN: the prompt fills {self.budget} "
                              "(the Cherry scripts skip the row)")
        uncond, uncond_start, _ = self.response_span(self.HEADER + output, output,
                                                     self.max_length - n_prompt + self.HEADER_BUDGET)
        cond, cond_start, cut = self.response_span(prompt + output, output, self.max_length)
        n_uncond, n_cond = len(uncond) - uncond_start, len(cond) - cond_start
        if n_uncond <= 0 or n_cond <= 0:
            return unscorable(f"NaN: no response token is left within {self.budget} "
                              "(the Cherry scripts skip the row)")
        if n_prompt + n_uncond > self.max_length:
            return unscorable(f"NaN: prompt ({n_prompt} tokens) plus unconditioned response "
                              f"({n_uncond} tokens) exceed {self.budget} "
                              "(the Cherry scripts skip the row)")
        note = f"response cut to {n_cond} tokens by {self.budget}" if cut else ""
        return EncodedRow(cond, cond_start, uncond, uncond_start, n_cond, note)
