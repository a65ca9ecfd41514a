"""What every encoder shares: one way to call the tokenizer, and one registry of conventions.

An encoder turns rows into token ids for one scorer under one convention (how a paper's script, or the
library's exact encoding, tokenizes). Each encoder class registers itself under ``(score, convention)``;
the scorers look a convention up here, so adding one is a class and a decorator, not another branch.
"""

from __future__ import annotations

SCORES = ("ifd", "gold")

# score -> convention -> encoder class, in the order registered (the order errors list them in).
ENCODERS: dict[str, dict[str, type[Encoder]]] = {score: {} for score in SCORES}


def register(score: str, convention: str):
    """Class decorator: the class encodes rows for ``score`` (``ifd`` or ``gold``) under ``convention``."""
    def add(cls: type[Encoder]) -> type[Encoder]:
        ENCODERS[score][convention] = cls
        return cls
    return add


def conventions(score: str) -> tuple[str, ...]:
    """The conventions registered for ``score``."""
    return tuple(ENCODERS[score])


def encoder_class(score: str, convention: str) -> type[Encoder]:
    """The encoder class of ``convention`` for ``score``; an unknown convention is an error naming the known ones."""
    if convention not in ENCODERS[score]:
        raise ValueError(f"unknown convention {convention!r}; choose one of {conventions(score)}")
    return ENCODERS[score][convention]


def make_encoder(score: str, convention: str, tokenizer, **settings) -> Encoder:
    """The encoder of ``convention`` for ``score``, built from ``tokenizer`` and its settings (keywords)."""
    return encoder_class(score, convention)(tokenizer, **settings)


class Encoder:
    """Base class: holds the tokenizer and calls it one way for every encoder.

    ``fixed_template`` is the template a convention imposes (None: the user picks one); ``default_max_length``
    its budget when the user gives none (None: the scorer's own default).
    """

    fixed_template: str | None = None
    default_max_length: int | None = None

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    @property
    def bos(self) -> list[int]:
        """The tokenizer's BOS as a prefix, or nothing when it defines none."""
        return [self.tokenizer.bos_token_id] if self.tokenizer.bos_token_id is not None else []

    def ids(self, text: str, special: bool = False, max_length: int | None = None) -> list[int]:
        """Ids of ``text``; ``special`` adds the tokenizer's own special tokens (as a bare ``tokenizer(text)``
        does), ``max_length`` cuts at the right."""
        return list(self.tokenizer(text, add_special_tokens=special, truncation=max_length is not None,
                                   max_length=max_length)["input_ids"])

    def ids_many(self, texts: list[str]) -> list[list[int]]:
        """``ids`` of each text, without special tokens, in one tokenizer call: a fast tokenizer then works
        through the texts in parallel, not one Python call per text."""
        return [list(ids) for ids in self.tokenizer(texts, add_special_tokens=False)["input_ids"]] if texts else []

