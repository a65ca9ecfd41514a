"""Scorers: callables for ``Dataset.map(scorer, batched=True)`` that add score columns."""

from .base import Scorer
from .gold import GOLD_COLUMNS, GoldScorer
from .ifd import IFD_COLUMNS, IFDScorer

__all__ = ["Scorer", "IFDScorer", "IFD_COLUMNS", "GoldScorer", "GOLD_COLUMNS"]
