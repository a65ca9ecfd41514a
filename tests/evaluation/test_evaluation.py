"""Evidence: fine-tune arms on the tiny model, evaluate with the engine, compare with paired bootstrap intervals."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from datasets import Dataset

pytest.importorskip("trl")

from hf_prospector.engine import Engine
from hf_prospector.evaluation import (Encoding, TrainSettings, as_train_dataset, bootstrap_interval, comparisons,
                                      encode_set, eval_losses, fine_tune, make_trainer, run_evidence, training_rows)
from hf_prospector.evaluation import run as run_module
from hf_prospector.models import load_causal_lm
from hf_prospector.scorers import IFDScorer
from tests.tiny import CORPUS

FAST = TrainSettings(steps=3, learning_rate=3e-3, batch_size=4)


def alpaca(n: int, offset: int = 0) -> Dataset:
    return Dataset.from_list([{"instruction": f"Task {i}: {CORPUS[i % 10]}", "input": "",
                               "output": " ".join(CORPUS[(i + j) % 10] for j in range(1 + i % 3))}
                              for i in range(offset, offset + n)])


# -- comparison arithmetic --------------------------------------------------------------------------------------

def test_bootstrap_interval_equals_a_brute_force_computation():
    diffs = np.array([0.3, -0.1, 0.25, 0.0, 0.7, -0.4, 0.15])
    draws, seed = 400, 5
    picks = np.random.default_rng(seed).integers(0, len(diffs), size=(draws, len(diffs)))
    means = sorted(sum(float(diffs[i]) for i in row) / len(row) for row in picks)

    def percentile(q):  # linear interpolation between closest ranks, written out
        pos = q / 100 * (len(means) - 1)
        lo = int(pos)
        return means[lo] + (means[min(lo + 1, len(means) - 1)] - means[lo]) * (pos - lo)

    low, high = bootstrap_interval(diffs, draws=draws, seed=seed)
    assert low == pytest.approx(percentile(2.5), abs=1e-12) and high == pytest.approx(percentile(97.5), abs=1e-12)
    assert low < diffs.mean() < high


def test_bootstrap_approaches_the_exact_bootstrap_distribution():
    import itertools

    diffs = np.array([1.0, 2.0, 4.0, 8.0])
    exact = np.array([np.mean(c) for c in itertools.product(diffs, repeat=4)])  # all 256 resamples, equally likely
    low, high = bootstrap_interval(diffs, draws=200_000, seed=1)
    assert low == pytest.approx(np.percentile(exact, 2.5), abs=0.05)
    assert high == pytest.approx(np.percentile(exact, 97.5), abs=0.05)


def test_zero_difference_gives_an_interval_containing_zero():
    assert bootstrap_interval(np.zeros(50)) == (0.0, 0.0)
    rng = np.random.default_rng(0)
    loss = rng.uniform(1, 3, 40)
    cmp = comparisons({"base": loss + 1, "random": loss, "same": loss.copy()}, "random", draws=1000)
    same = cmp["arms"]["same"]
    assert same["diff_vs_baseline"] == 0 and same["ci_low"] <= 0 <= same["ci_high"]


def test_several_random_seeds_form_the_baseline_and_show_their_spread():
    a, b, c = np.full(5, 2.0), np.full(5, 2.2), np.full(5, 1.5)
    cmp = comparisons({"random-s0": a, "random-s1": b, "ifd": c}, "random", draws=200)
    assert cmp["baseline_arms"] == ["random-s0", "random-s1"]
    assert cmp["arms"]["ifd"]["diff_vs_baseline"] == pytest.approx(-0.6)
    assert cmp["seed_spread"]["range"] == pytest.approx(0.2)
    with pytest.raises(ValueError, match="no arm is the baseline 'longest'"):
        comparisons({"random-s0": a, "ifd": c}, "longest")


# -- the tiny model ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    return str(tiny_model_dir)


def encoded(tiny, ds, **kwargs):
    _, tokenizer = load_causal_lm(tiny)
    return encode_set(ds, "arm 'x'", tokenizer, Encoding(), **kwargs), tokenizer


def test_only_response_tokens_carry_loss(tiny):
    ds = alpaca(6)
    enc, tokenizer = encoded(tiny, ds)
    model, _ = load_causal_lm(tiny)
    trainer = make_trainer(model, tokenizer, as_train_dataset(enc), FAST, str(tiny) + "-sft")
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(len(ds))])
    for k, row in enumerate(ds):
        response = tokenizer(row["output"], add_special_tokens=False)["input_ids"]
        labels = batch["labels"][k].tolist()
        carried = [t for t in labels if t != -100]
        assert carried == response  # exactly the response's ids, nothing of the prompt or padding
        assert labels[:len(enc.ids[k]) - len(response)] == [-100] * (len(enc.ids[k]) - len(response))


def test_settings_reach_the_trainer_and_checkpointing_is_off_by_default(tiny):
    """TRL turns gradient checkpointing on by default (a third more compute); the arms' settings decide."""
    enc, tokenizer = encoded(tiny, alpaca(2))
    model, _ = load_causal_lm(tiny)
    args = make_trainer(model, tokenizer, as_train_dataset(enc), FAST, str(tiny) + "-sft").args
    assert not args.gradient_checkpointing and args.learning_rate == FAST.learning_rate
    on = TrainSettings(steps=1, gradient_checkpointing=True)
    assert make_trainer(model, tokenizer, as_train_dataset(enc), on, str(tiny) + "-sft").args.gradient_checkpointing


@pytest.mark.slow
def test_fine_tuning_lowers_the_arms_loss_and_repeats_exactly(tiny):
    enc, tokenizer = encoded(tiny, alpaca(8))
    base, _ = load_causal_lm(tiny)
    before = eval_losses(Engine(base, tokenizer, "cpu", "float32", compile=False), enc)
    runs = []
    for _ in range(2):
        model, _ = load_causal_lm(tiny)
        tuned, history = fine_tune(model, tokenizer, as_train_dataset(enc), FAST)
        weights = {k: v.clone() for k, v in tuned.state_dict().items()}
        runs.append((weights, eval_losses(Engine(tuned, tokenizer, "cpu", "float32", compile=False), enc)))
    (w1, after1), (w2, after2) = runs
    assert after1.mean() < before.mean() - 0.05
    assert all(torch.equal(w1[k], w2[k]) for k in w1)  # same seed: the same tuned weights
    np.testing.assert_array_equal(after1, after2)  # and the same eval numbers


def test_untuned_eval_loss_is_the_scorers_loss_cond(tiny):
    ds = alpaca(12)
    enc, tokenizer = encoded(tiny, ds)
    model, _ = load_causal_lm(tiny)
    mine = eval_losses(Engine(model, tokenizer, "cpu", "float32", compile=False), enc)
    scored = IFDScorer(tiny, dtype="float32", compile=False).score(ds)
    np.testing.assert_allclose(mine, np.array(scored["loss_cond"][:])[enc.positions], rtol=1e-5)


def test_encoding_of_a_scorer_is_the_one_it_scored_with(tiny):
    assert Encoding.of(IFDScorer(tiny, template="alpaca", max_length=256)) == Encoding("alpaca", 256, 16)
    assert Encoding.of(IFDScorer(tiny, min_response_tokens=4)) == Encoding("plain", 1024, 4)
    assert Encoding.of(IFDScorer(tiny, convention="cherry")) == Encoding("alpaca", 512, 16)


def test_arms_get_the_rows_and_token_budgets_asked_for(tiny):
    enc, _ = encoded(tiny, alpaca(20))
    assert len(training_rows(enc, "a", rows=7).ids) == 7
    tokens = enc.response_tokens
    budget = sum(tokens[:5]) + 1  # room for 5 rows, not 6 (unless the 6th is 1 token)
    cut = training_rows(enc, "a", tokens=budget)
    assert sum(cut.response_tokens) <= budget < sum(tokens[:len(cut.ids) + 1])
    assert len(cut.ids) == 5
    with pytest.raises(ValueError, match="arm 'a' has 20 usable rows, fewer than rows=21"):
        training_rows(enc, "a", rows=21)
    with pytest.raises(ValueError, match="fewer than tokens="):
        training_rows(enc, "a", tokens=sum(tokens) + 1)


# -- run_evidence: resume and bad input -------------------------------------------------------------------------

class CountingFineTune:
    def __init__(self):
        self.calls = []

    def __call__(self, model, tokenizer, train, settings, device="cpu"):
        self.calls.append(len(train))
        return fine_tune(model, tokenizer, train, settings, device)


@pytest.mark.filterwarnings("ignore:.*also train in arm")
@pytest.mark.slow
def test_resume_skips_finished_arms_and_counts_eval_overlap(tiny, tmp_path, monkeypatch):
    spy = CountingFineTune()
    monkeypatch.setattr(run_module, "fine_tune", spy)
    pool = alpaca(30)
    arms = {"random-0": pool.select(range(0, 6)), "longest": pool.select(range(12, 18))}
    eval_set = pool.select(range(16, 26))  # rows 16 and 17 also train in "longest"
    kwargs = dict(base_model=tiny, settings=FAST, draws=500, log=lambda _: None)
    with pytest.warns(UserWarning, match="2 of the 10 rows of evaluation set 'eval' also train in arm 'longest'"):
        first = run_evidence(arms, eval_set, tmp_path, **kwargs)
    assert spy.calls == [6, 6] and first["arms"]["longest"]["eval_overlap"] == {"eval": 2}
    assert first["arms"]["random-0"]["eval_overlap"] == {"eval": 0} and len(first["warnings"]) == 1
    report = (tmp_path / "report.md").read_text()
    assert "| longest | 6 |" in report and "also train in arm 'longest'" in report
    assert (tmp_path / "evidence.png").stat().st_size > 0
    stored = json.loads((tmp_path / "evidence.json").read_text())
    assert stored["comparison"]["eval"]["baseline_arms"] == ["random-0"]
    # The same settings again: nothing is retrained, and the numbers are the stored ones.
    again = run_evidence(arms, eval_set, tmp_path, **kwargs)
    assert len(spy.calls) == 2 and again["comparison"] == first["comparison"]
    # One more arm: only it trains. Other settings: the arm trains again.
    run_evidence({**arms, "ifd": pool.select(range(18, 24))}, eval_set, tmp_path, **kwargs)
    assert len(spy.calls) == 3
    run_evidence({"random-0": arms["random-0"]}, eval_set, tmp_path,
                 **{**kwargs, "settings": TrainSettings(steps=2, batch_size=4)})
    assert len(spy.calls) == 4


@pytest.mark.slow
def test_several_evaluation_sets_share_one_training_per_arm(tiny, tmp_path, monkeypatch):
    spy = CountingFineTune()
    monkeypatch.setattr(run_module, "fine_tune", spy)
    pool = alpaca(30)
    arms = {"random": pool.select(range(0, 6)), "ifd": pool.select(range(6, 12))}
    both = run_evidence(arms, {"held_out": pool.select(range(20, 30)), "other": alpaca(5, offset=40)}, tmp_path,
                        base_model=tiny, settings=FAST, draws=200, log=lambda _: None)
    assert len(spy.calls) == 2 and both["eval_rows"] == {"held_out": 10, "other": 5}
    alone = run_evidence(arms, pool.select(range(20, 30)), tmp_path / "alone", base_model=tiny, settings=FAST,
                         draws=200, log=lambda _: None)
    assert both["comparison"]["held_out"] == alone["comparison"]["eval"]  # the same numbers, set by set
    report = (tmp_path / "report.md").read_text()
    assert "## Evaluation set `held_out`: 10 rows" in report and "## Evaluation set `other`: 5 rows" in report


def test_bad_input_is_refused_before_training(tiny, tmp_path, monkeypatch):
    spy = CountingFineTune()
    monkeypatch.setattr(run_module, "fine_tune", spy)
    pool = alpaca(20)
    kwargs = dict(base_model=tiny, settings=FAST, log=lambda _: None)
    empty = pool.select([])
    with pytest.raises(ValueError, match="arm 'ifd' has no usable row"):
        run_evidence({"random": pool.select(range(5)), "ifd": empty}, pool, tmp_path, **kwargs)
    with pytest.raises(ValueError, match=r"arms of different sizes \{'random': 5, 'ifd': 3\}.*rows=3"):
        run_evidence({"random": pool.select(range(5)), "ifd": pool.select(range(5, 8))}, pool, tmp_path, **kwargs)
    no_response = pool.remove_columns(["output"])
    with pytest.raises(ValueError, match="evaluation set 'eval': no instruction/response columns"):
        run_evidence({"random": pool.select(range(5))}, no_response, tmp_path, **kwargs)
    with pytest.raises(ValueError, match="reserved"):
        run_evidence({"base": pool.select(range(5))}, pool, tmp_path, **kwargs)
    assert spy.calls == []
