"""Length profile of a selection against an independent computation (plain Python and scipy.stats.spearmanr)."""

from __future__ import annotations

import math
import random
import statistics

import pytest
from datasets import Dataset
from scipy.stats import spearmanr

from hf_prospector.selection import length_profile, longest, select
from hf_prospector.selection.lengths import rows_measurable


def pool(n: int = 60, seed: int = 3) -> Dataset:
    """Alpaca rows; IFD grows with response length plus noise, n_response_tokens = 2 x words + 1."""
    rng = random.Random(seed)
    words = [rng.randrange(1, 30) for _ in range(n)]
    outputs = [" ".join(["w"] * k) for k in words]
    return Dataset.from_dict({
        "instruction": [" ".join(["do"] * rng.randrange(1, 9)) for _ in range(n)],
        "input": ["" if i % 3 else "some input here" for i in range(n)], "output": outputs,
        "ifd": [k / 30 + rng.uniform(-0.3, 0.3) for k in words], "ppl_cond": [rng.uniform(1, 9) for _ in range(n)],
        "n_response_tokens": [2 * k + 1 for k in words]})


def words_of_prompt(row) -> int:
    return len((row["instruction"] + ("\n" + row["input"] if row["input"] else "")).split())


def test_profile_matches_an_independent_computation():
    ds = pool()
    top, _ = select(ds, longest(10))
    profile = length_profile(ds, top)
    assert (profile.response_unit, profile.instruction_unit) == ("n_response_tokens", "words")
    lengths = [float(x) for x in ds["n_response_tokens"]]
    for label, rows in (("all rows", ds), ("selected", top)):
        want = [float(x) for x in rows["n_response_tokens"]]
        got = profile.response[label]
        assert got.count == len(want) and got.mean == pytest.approx(statistics.fmean(want))
        assert got.median == pytest.approx(statistics.median(want)) and got.max == max(want)
        prompts = [words_of_prompt(r) for r in rows]
        assert profile.instruction[label].mean == pytest.approx(statistics.fmean(prompts))
    for column in ("ifd", "ppl_cond"):
        want = spearmanr(ds[column], lengths).statistic
        assert profile.correlations[column].spearman == pytest.approx(want, abs=1e-12)
        assert profile.correlations[column].rows_used == len(ds)
    assert profile.correlations["ifd"].spearman > 0.5  # this pool's IFD follows length, and the profile shows it
    assert "n_response_tokens" not in profile.correlations


def test_words_when_there_is_no_scorer_column_and_unreadable_rows_are_counted():
    rows = pool()
    chats = [[{"role": "user", "content": r["instruction"]}, {"role": "assistant", "content": r["output"]}]
             for r in rows]
    chats[4] = chats[4][:1]  # no assistant turn: nothing to measure, NaN
    ds = Dataset.from_dict({"messages": chats, "ifd": rows["ifd"]})
    profile = length_profile(ds)
    assert profile.response_unit == "words" and list(profile.response) == ["all rows"]
    words = [len(c[1]["content"].split()) if len(c) > 1 else math.nan for c in chats]
    finite = [w for w in words if not math.isnan(w)]
    assert profile.response["all rows"].count == len(ds) - 1 and profile.response["all rows"].missing == 1
    assert profile.response["all rows"].mean == pytest.approx(statistics.fmean(finite))
    ok = [i for i, w in enumerate(words) if not math.isnan(w)]
    want = spearmanr([ds["ifd"][i] for i in ok], [words[i] for i in ok]).statistic
    assert profile.correlations["ifd"].spearman == pytest.approx(want, abs=1e-12)
    assert profile.correlations["ifd"].rows_excluded == 1


def test_a_tokenizer_counts_tokens(tiny_model_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    ds = pool(12).remove_columns("n_response_tokens").select(range(5, 12))
    profile = length_profile(ds, by="tokens", tokenizer=tokenizer)
    assert (profile.response_unit, profile.instruction_unit) == ("tokens", "tokens")
    responses = [len(tokenizer(o, add_special_tokens=False)["input_ids"]) for o in ds["output"]]
    prompts = [len(tokenizer(r["instruction"] + ("\n" + r["input"] if r["input"] else ""),
                             add_special_tokens=False)["input_ids"]) for r in ds]
    assert profile.response["all rows"].mean == pytest.approx(statistics.fmean(responses))
    assert profile.instruction["all rows"].mean == pytest.approx(statistics.fmean(prompts))


def test_the_report_text_and_dict_carry_the_profile():
    ds = pool()
    top, report = select(ds, longest(10))
    assert "lengths" not in report.to_dict() and "response length" not in report.to_text()
    report.lengths = length_profile(ds, top)
    text = report.to_text()
    assert text.startswith(f"kept 10 of {len(ds)} rows") and "response length (n_response_tokens): all rows mean" in text
    assert "Spearman with response length (all rows): ifd +" in text
    assert report.to_dict()["lengths"]["response"]["selected"]["count"] == 10
    assert "| `ifd` |" in report.lengths.to_markdown()


def test_rows_without_text_are_not_measurable():
    assert not rows_measurable(Dataset.from_dict({"ifd": [0.5]}))
    assert rows_measurable(pool(3))
