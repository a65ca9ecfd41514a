"""Encoders: rows to token ids, for every scorer and convention, behind one registry.

* :mod:`.base`: the :class:`Encoder` base (the one way the tokenizer is called) and the registry
  (:func:`register`, :func:`encoder_class`, :func:`make_encoder`).
* :mod:`.exact`: the library's exact encoding for IFD (:class:`PairEncoder`, templates).
* :mod:`.papers`: the papers' scripts for IFD (``superfiltering``, ``cherry``) and :func:`resolve_settings`.
* :mod:`.gold`: the golden score's candidates and tasks (``exact``, ``nuggets``).

A scorer builds its encoder once per engine (tokenizer and context window) and keeps it beside the engine.
"""

from .base import ENCODERS, Encoder, conventions, encoder_class, make_encoder, register
from .exact import (ALPACA_PROMPT, ALPACA_PROMPT_NO_INPUT, TEMPLATES, EncodedRow, PairEncoder, assistant_header,
                    render_context)
from .gold import EncodedTask, ExactGoldEncoder, GoldEncoder, NuggetsGoldEncoder, nuggets_prompt
from .papers import CherryEncoder, ScriptEncoder, SuperfilteringEncoder, resolve_settings

__all__ = ["ENCODERS", "Encoder", "conventions", "encoder_class", "make_encoder", "register", "ALPACA_PROMPT",
           "ALPACA_PROMPT_NO_INPUT", "TEMPLATES", "EncodedRow", "PairEncoder", "assistant_header", "render_context",
           "EncodedTask", "ExactGoldEncoder", "GoldEncoder", "NuggetsGoldEncoder", "nuggets_prompt", "CherryEncoder",
           "ScriptEncoder", "SuperfilteringEncoder", "resolve_settings"]
