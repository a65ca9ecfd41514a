"""Tiny scored datasets and an independent reading of the card, shared by the publishing tests."""

from __future__ import annotations

import math
import random

import numpy as np
from datasets import Dataset
from PIL import Image

PROVENANCE = {"source": "bob/alpaca-src", "source_revision": "0123abc", "scorer": "ifd", "model": "tiny-llama",
              "model_revision": "main", "template": "alpaca", "convention": "superfiltering", "max_length": 512,
              "selection_rule": "ifd > 0.9 and ifd < 1", "selection_rule_slug": "ifd-0.9-1"}


def scored_dataset(rows: int = 40, seed: int = 0) -> Dataset:
    """Alpaca rows with IFD and perplexity columns; rows 3 and 7 (when present) have no ppl_cond (None, NaN)."""
    rng = random.Random(seed)
    ppl_cond = [None if i == 3 else math.nan if i == 7 else rng.uniform(1, 20) for i in range(rows)]
    return Dataset.from_dict({
        "row_id": list(range(100, 100 + rows)),
        "instruction": [f"instruction {i}" for i in range(rows)],
        "input": [""] * rows,
        "output": [f"response {i}" for i in range(rows)],
        "ifd": [rng.uniform(0.2, 1.3) for _ in range(rows)],
        "ppl_cond": ppl_cond,
    })


def rows_where(ds: Dataset, keep) -> Dataset:
    """The rows for which ``keep(row)`` holds, by brute force (independent of the library's selection code)."""
    return ds.select([i for i, row in enumerate(ds) if keep(row)])


def quantile(values: list[float], q: float) -> float:
    """Linear-interpolation quantile (numpy's default), written out."""
    xs = sorted(values)
    h = (len(xs) - 1) * q
    lo = math.floor(h)
    return xs[lo] if lo + 1 >= len(xs) else xs[lo] + (h - lo) * (xs[lo + 1] - xs[lo])


def expected_stats(values: list) -> dict[str, float]:
    finite = [float(v) for v in values if v is not None and math.isfinite(v)]
    return {"count": len(finite), "NaN": len(values) - len(finite), "min": min(finite), "q05": quantile(finite, 0.05),
            "q25": quantile(finite, 0.25), "median": quantile(finite, 0.5), "q75": quantile(finite, 0.75),
            "q95": quantile(finite, 0.95), "mean": math.fsum(finite) / len(finite), "max": max(finite)}


def card_stats(card_text: str) -> dict[tuple[str, str], dict[str, float]]:
    """The card's score table as {(score, "all rows" | "selected"): {statistic: value}}."""
    lines = [line for line in card_text.splitlines() if line.startswith("| score |")]
    assert len(lines) == 1, "the card has exactly one score table"
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    start = card_text.splitlines().index(lines[0]) + 2
    table = {}
    for line in card_text.splitlines()[start:]:
        if not line.startswith("|"):
            break
        cells = dict(zip(header, (c.strip() for c in line.strip("|").split("|"))))
        key = (cells.pop("score"), cells.pop("rows"))
        table[key] = {k: float(v) for k, v in cells.items()}
    return table


def provenance_table(card_text: str) -> dict[str, str]:
    lines = card_text.splitlines()
    start = lines.index("| fact | value |") + 2
    facts = {}
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        key, value = (c.strip() for c in line.strip("|").split("|"))
        facts[key] = value
    return facts


def assert_stats_match(card_text: str, expected: dict[tuple[str, str], list]) -> None:
    """Every (score, rows) entry of ``expected`` (raw values) matches the card's table, counts exactly."""
    table = card_stats(card_text)
    assert set(table) == set(expected)
    for key, values in expected.items():
        want = expected_stats(values)
        got = table[key]
        assert (got["count"], got["NaN"]) == (want["count"], want["NaN"]), key
        for stat in ("min", "q05", "q25", "median", "q75", "q95", "mean", "max"):
            assert math.isclose(got[stat], want[stat], rel_tol=1e-5), (key, stat, got[stat], want[stat])


def assert_png(file) -> None:
    """A real figure: a PNG larger than 100 x 100 pixels that is not one flat colour (``file``: a path or a
    binary file object)."""
    with Image.open(file) as image:
        assert image.format == "PNG" and image.width > 100 and image.height > 100
        pixels = np.asarray(image.convert("L"))
    assert pixels.std() > 0, f"{file} is blank"
