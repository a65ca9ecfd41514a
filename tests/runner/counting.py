"""Test doubles for scoring runs: an IFD scorer that counts the rows it scores, and can pause or fail."""

from __future__ import annotations

import json
import time
from pathlib import Path

from hf_prospector.scorers import IFDScorer


class ScorerFailed(RuntimeError):
    """Raised by :class:`CountingScorer` to stand in for a crash."""


class CountingScorer(IFDScorer):
    """``IFDScorer`` that records the ``row_id`` of every row it scores (in ``scored`` and, when given, one JSON
    line per call in ``count_file``), sleeps ``pause`` seconds per call, and raises after ``fail_after`` calls.
    The counts come from the scorer itself, so they show what was computed, whatever the runner reports."""

    def __init__(self, *args, count_file: str | None = None, pause: float = 0.0, fail_after: int | None = None,
                 **kwargs):
        super().__init__(*args, **kwargs)
        self.count_file, self.pause, self.fail_after = count_file, pause, fail_after
        self.scored: list = []
        self.calls = 0

    def __call__(self, batch, *extra):
        if self.fail_after is not None and self.calls >= self.fail_after:
            raise ScorerFailed(f"failing on purpose after {self.calls} calls")
        out = super().__call__(batch, *extra)
        self.calls += 1
        self.scored += batch["row_id"]
        if self.count_file:
            with open(self.count_file, "a") as f:
                f.write(json.dumps(batch["row_id"]) + "\n")
        time.sleep(self.pause)
        return out


def counted_rows(count_file: str | Path) -> list:
    """Every row id the scorer recorded in ``count_file`` (repeats included)."""
    path = Path(count_file)
    if not path.exists():
        return []
    return [row for line in path.read_text().splitlines() for row in json.loads(line)]
