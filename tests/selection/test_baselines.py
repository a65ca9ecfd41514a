"""Baseline rules (random, longest, length-matched random) against plain-Python references."""

from __future__ import annotations

import random
import re

import numpy as np
import pytest
from datasets import Dataset

from hf_prospector.selection import SelectionRule, length_matched_random, longest, random_rows, select
from hf_prospector.selection.baselines import response_lengths


def pool(n: int = 200, seed: int = 0, scored: bool = False) -> Dataset:
    """Alpaca rows whose responses have 0-39 words, many lengths tied; ``n_response_tokens`` = 2 x words + 1."""
    rng = random.Random(seed)
    words = [rng.randrange(40) for _ in range(n)]
    columns = {"instruction": [f"task {i}" for i in range(n)], "input": [""] * n,
               "output": [" ".join(["word"] * w) for w in words], "row": list(range(n))}
    if scored:
        columns["n_response_tokens"] = [2 * w + 1 for w in words]
    return Dataset.from_dict(columns)


def rows(ds: Dataset) -> list[int]:
    return ds["row"][:]


def report_adds_up(report, n: int) -> bool:
    return report.considered == n and report.kept + sum(report.dropped.values()) == n


# -- random ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("size, k", [(17, 17), (0.1, 20), (0.25, 50), (1.0, 200), (500, 200)])
@pytest.mark.parametrize("seed", [0, 7])
def test_random_rows_are_the_seeded_permutations_head(size, k, seed):
    ds = pool()
    out, report = select(ds, random_rows(size, seed=seed))
    permutation = [int(i) for i in np.random.default_rng(seed).permutation(len(ds))]
    assert rows(out) == permutation[:k]  # the documented draw, in draw order
    assert report.kept == k and report.dropped == {"not_finite": 0, "not_drawn": 200 - k}
    assert report_adds_up(report, 200)
    assert report.rule == f"random-top{size if isinstance(size, int) else f'{size * 100:g}pct'}-seed{seed}"


def test_random_rows_differ_by_seed_and_are_uniform():
    ds = pool(50)
    draws = [set(rows(select(ds, random_rows(10, seed=s))[0])) for s in range(400)]
    assert len({frozenset(d) for d in draws}) > 390
    inclusion = np.bincount([r for d in draws for r in d], minlength=50) / 400
    assert abs(inclusion.mean() - 0.2) < 1e-12 and inclusion.min() > 0.1 and inclusion.max() < 0.3
    original, _ = select(ds, random_rows(10, seed=3), order="original")
    assert rows(original) == sorted(draws[3])


# -- longest --------------------------------------------------------------------------------------------------

def reference_longest(lengths: list[float], k: int) -> list[int]:
    """Python's sort: longest first, ties to the earlier row, unreadable (None) rows never kept."""
    ranked = sorted((i for i, n in enumerate(lengths) if n is not None), key=lambda i: (-lengths[i], i))
    return ranked[:k]


@pytest.mark.parametrize("size, k", [(5, 5), (30, 30), (0.15, 30)])
def test_longest_by_words_with_ties(size, k):
    ds = pool()
    out, report = select(ds, longest(size))  # no n_response_tokens, no tokenizer: words
    words = [len(o.split()) for o in ds["output"]]
    assert rows(out) == reference_longest(words, k)
    assert report.rule.endswith("-words") and "whitespace-separated words" in report.note
    assert report.dropped == {"not_finite": 0, "not_top": 200 - k}


def test_longest_prefers_the_scorers_column_then_a_tokenizer():
    scored = pool(scored=True)
    # Make the column disagree with the words so the test sees which one ranked.
    scored = scored.map(lambda r: {"n_response_tokens": 100 - r["n_response_tokens"]})
    out, report = select(scored, longest(10))
    assert rows(out) == reference_longest(scored["n_response_tokens"][:], 10)
    assert report.rule == "longest-top10-ntok"

    class CharTokenizer:  # one token per character
        def __call__(self, texts, add_special_tokens=False):
            return {"input_ids": [list(t) for t in texts]}

    plain = pool()
    out, report = select(plain, longest(10, tokenizer=CharTokenizer()))
    assert rows(out) == reference_longest([len(o) for o in plain["output"]], 10)
    assert report.rule == "longest-top10-tok"
    with pytest.raises(KeyError, match="no such column.*by='words'"):
        select(plain, longest(3, by="n_response_tokens"))
    with pytest.raises(ValueError, match="needs tokenizer="):
        select(plain, longest(3, by="tokens"))


def test_longest_never_keeps_an_unreadable_row():
    chats = Dataset.from_dict({"messages": [
        [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a b c d e f"}],
        [{"role": "user", "content": "q"}, {"role": "wizard", "content": "x"}],  # unknown role: unreadable
        [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a b"}]]})
    out, report = select(chats, longest(3))
    assert [m[-1]["content"] for m in out["messages"]] == ["a b c d e f", "a b"]
    assert report.dropped == {"not_finite": 1, "not_top": 0}
    assert np.isnan(response_lengths(chats, "words")[1])


# -- length-matched random ------------------------------------------------------------------------------------

def quantile(sorted_values: list[float], q: float) -> float:
    """Linear-interpolation quantile, written out (numpy's default method)."""
    position = q * (len(sorted_values) - 1)
    low = int(position)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (position - low)


def bin_of(x: float, edges: list[float]) -> int:
    return sum(1 for e in edges if e <= x)


@pytest.mark.parametrize("bins", [10, 4])
@pytest.mark.parametrize("seed", [0, 1])
def test_length_matched_random_matches_the_reference_deciles(bins, seed):
    ds = pool(400)
    reference, _ = select(ds, longest(40))  # a selection skewed to long responses
    rule = length_matched_random(reference, seed=seed, bins=bins)
    out, report = select(ds, rule)

    ref_lengths = sorted(len(o.split()) for o in reference["output"])
    edges = [quantile(ref_lengths, b / bins) for b in range(1, bins)]
    assert list(rule.edges) == pytest.approx(edges)
    expected = [sum(1 for x in ref_lengths if bin_of(x, edges) == b) for b in range(bins)]
    drawn = [bin_of(len(o.split()), edges) for o in out["output"]]
    assert [drawn.count(b) for b in range(bins)] == expected  # the reference's rows per bin, exactly
    assert len(set(rows(out))) == report.kept == 40
    assert report.dropped == {"not_finite": 0, "not_drawn": 360} and report_adds_up(report, 400)
    assert report.rule == f"length-matched-random-40-{bins}bins-seed{seed}-words"
    # A random draw, not the reference itself, and another seed draws other rows.
    other, _ = select(ds, length_matched_random(reference, seed=seed + 10, bins=bins))
    assert set(rows(other)) != set(rows(out))


def test_length_matched_random_uniform_within_a_bin():
    lengths = [5] * 30 + [20] * 30
    ds = Dataset.from_dict({"instruction": ["t"] * 60, "output": [" ".join(["w"] * n) for n in lengths],
                            "row": list(range(60))})
    counts = np.zeros(60)
    for seed in range(300):
        out, _ = select(ds, length_matched_random([5, 20, 20], seed=seed, bins=2))
        picked = rows(out)
        assert sum(1 for r in picked if r < 30) == 1 and sum(1 for r in picked if r >= 30) == 2
        counts[picked] += 1
    assert counts[:30].min() > 0 and counts[30:].min() > 0  # every row of a bin can be drawn
    assert abs(counts[:30].mean() - 10) < 1e-9 and abs(counts[30:].mean() - 20) < 1e-9


def test_length_matched_random_reports_a_short_bin_and_refuses_what_cannot_work():
    ds = pool(100)
    long_only = [1000.0] * 5 + [3.0] * 5  # bin 1 (1000 words) has no row in the pool
    out, report = select(ds, length_matched_random(long_only, bins=2))
    assert report.kept == 5 and "bin 1: 0 of 5" in report.note
    with pytest.raises(ValueError, match="nothing can be drawn"):
        select(ds, length_matched_random([1000.0] * 3, bins=2))  # every reference row in the top bin
    with pytest.raises(ValueError, match="non-empty reference"):
        length_matched_random([])
    scored = pool(scored=True)
    reference, _ = select(scored, longest(10))  # measured by n_response_tokens
    with pytest.raises(ValueError, match="counted as 'n_response_tokens'.*'words'"):
        select(pool(), length_matched_random(reference))


@pytest.mark.parametrize("bad", [0, -3, True, "5", None])
def test_bad_sizes_are_refused(bad):
    with pytest.raises(ValueError):
        random_rows(bad)
    with pytest.raises(ValueError):
        longest(bad)


def test_names_are_branch_safe_and_rules_are_selection_rules():
    rules = [random_rows(0.05, seed=2), longest(500), length_matched_random([1, 2, 3])]
    assert all(isinstance(r, SelectionRule) for r in rules)
    assert all(re.fullmatch(r"[A-Za-z0-9_-]+", r.name) for r in rules)
