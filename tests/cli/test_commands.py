"""The subcommands on small inputs: each result checked against a computation written here."""

import json
import math
import re

import datasets
import numpy as np
import pytest

from hf_prospector.cli import main
from hf_prospector.publishing import list_revisions
from hf_prospector.scorers import GoldScorer
from hf_prospector.sources import load_rows
from tests.oracles import top_fraction

RNG = np.random.default_rng(7)
N = 40


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    """Rows with IFD-like scores (some >= 1, one NaN, ties), saved to disk as the score command would."""
    ifd = np.round(RNG.uniform(0.2, 1.3, N), 2)
    ifd[5] = math.nan
    ppl_uncond = RNG.uniform(2, 50, N)
    ds = datasets.Dataset.from_dict({
        "row_id": list(range(N)), "instruction": [f"Task {i}: say {i}." for i in range(N)],
        "input": [""] * N, "output": [f"The answer is {i}." for i in range(N)],
        "ifd": ifd.tolist(), "ppl_cond": (ifd * ppl_uncond).tolist(), "ppl_uncond": ppl_uncond.tolist(),
        "ifd_note": ["NaN: empty response" if i == 5 else "" for i in range(N)]})
    path = tmp_path_factory.mktemp("scored") / "scored"
    ds.save_to_disk(str(path))
    return path, ds


def test_select_top_fraction(scored, tmp_path, capsys):
    path, ds = scored
    out = tmp_path / "top.parquet"
    assert main(["select", str(path), "--column", "ifd", "--top-fraction", "0.3", "--output", str(out)]) == 0
    kept = datasets.Dataset.from_parquet(str(out))
    assert kept["row_id"] == top_fraction(ds["ifd"], 0.3)
    assert f"kept {len(kept)} of {N} rows" in capsys.readouterr().out


def test_select_threshold_lowest_and_unbounded(scored, tmp_path):
    path, ds = scored
    assert main(["select", str(path), "--threshold", "0.5", "--lowest", "--output", str(tmp_path / "low")]) == 0
    expected = sorted((i for i, v in enumerate(ds["ifd"]) if v < 0.5), key=lambda i: (ds["ifd"][i], i))
    assert datasets.load_from_disk(str(tmp_path / "low"))["row_id"] == expected
    assert main(["select", str(path), "--top-n", "3", "--no-ifd-max", "--output", str(tmp_path / "any")]) == 0
    finite = [i for i, v in enumerate(ds["ifd"]) if math.isfinite(v)]
    assert datasets.load_from_disk(str(tmp_path / "any"))["row_id"] == sorted(finite, key=lambda i: (-ds["ifd"][i], i))[:3]


def test_select_errors_name_the_problem(scored, tmp_path, capsys):
    path, _ = scored
    assert main(["select", str(path), "--column", "gold_score", "--top-n", "3", "--output", str(tmp_path / "x")]) == 2
    assert "no score column 'gold_score'" in capsys.readouterr().err


@pytest.mark.real_model
def test_select_with_diversity(scored, tmp_path, minilm):
    path, ds = scored
    out = tmp_path / "diverse"
    assert main(["select", str(path), "--top-fraction", "0.5", "--diversity", "4", "--output", str(out)]) == 0
    kept = datasets.load_from_disk(str(out))
    assert len(kept) == 4 and set(kept["row_id"]) <= set(top_fraction(ds["ifd"], 0.5))
    assert not any(c.startswith("embedding_") for c in kept.column_names)
    assert sorted(kept["fl_rank"]) == [0, 1, 2, 3]


def test_card_and_publish(scored, tmp_path, capsys):
    path, ds = scored
    assert main(["select", str(path), "--top-n", "5", "--output", str(tmp_path / "sel")]) == 0
    assert main(["card", str(path), "--selected", str(tmp_path / "sel"), "--out", str(tmp_path / "card"),
                 "--source", "my-rows"]) == 0
    card = (tmp_path / "card" / "README.md").read_text()
    top5 = sorted((v for v in ds["ifd"] if v < 1), reverse=True)[:5]
    assert "| source | my-rows |" in card and f"| ifd | selected | 5 | 0 | {min(top5):g} |" in card
    assert (tmp_path / "card" / "figures" / "ifd_histogram.png").exists()

    repo = tmp_path / "repo"
    assert main(["publish", str(tmp_path / "sel"), str(repo), "--scored", str(path), "--rule", "ifd-top5",
                 "--source", "my-rows"]) == 0
    assert "revision select-ifd-top5" in capsys.readouterr().out
    assert [r.name for r in list_revisions(repo)] == ["main", "select-ifd-top5"]
    published = datasets.load_dataset(str(repo), split="train")
    assert published["row_id"] == datasets.load_from_disk(str(tmp_path / "sel"))["row_id"]


def test_report_compare_and_assess(scored, tmp_path, capsys):
    path, ds = scored
    noisy = ds.map(lambda row: {"ifd": row["ifd"] * (1.01 if row["row_id"] % 2 else 0.99)})
    noisy.save_to_disk(str(tmp_path / "b"))
    assert main(["report", "compare", str(path), str(tmp_path / "b"), "--names", "small", "large",
                 "--out", str(tmp_path / "cmp")]) == 0
    text = capsys.readouterr().out
    assert "# Score consistency: small vs large" in text and (tmp_path / "cmp" / "report.md").exists()
    assert main(["report", "assess", f"mine={path}", "--out", str(tmp_path / "assess"), "--fraction", "0.1"]) == 0
    assert (tmp_path / "assess" / "report.md").exists() and "mine" in capsys.readouterr().out


def test_taskset_saves_the_rows(tmp_path):
    tasks = load_rows("demo").select(range(6))
    tasks.to_json(str(tmp_path / "tasks.jsonl"))
    assert main(["taskset", str(tmp_path / "tasks.jsonl"), "--output", str(tmp_path / "ts.parquet")]) == 0
    assert datasets.Dataset.from_parquet(str(tmp_path / "ts.parquet"))["instruction"] == tasks["instruction"]


@pytest.mark.real_model
def test_taskset_refined(tmp_path, minilm):
    load_rows("demo").to_json(str(tmp_path / "tasks.jsonl"))
    assert main(["taskset", str(tmp_path / "tasks.jsonl"), "--output", str(tmp_path / "ts"), "--refine-k", "3",
                 "--refine-sample", "10"]) == 0
    refined = datasets.load_from_disk(str(tmp_path / "ts"))
    assert len(refined) == 3 and refined["cluster"] == [0, 1, 2]


def test_score_gold_equals_the_scorer(tiny_model_dir, tmp_path, capsys):
    rows = load_rows("demo").select(range(4))
    rows.to_json(str(tmp_path / "rows.jsonl"))
    tasks = load_rows("demo").select(range(10, 13))
    tasks.to_json(str(tmp_path / "tasks.jsonl"))
    out = tmp_path / "gold"
    assert main(["score", str(tmp_path / "rows.jsonl"), "--scorer", "gold", "--task-set", str(tmp_path / "tasks.jsonl"),
                 "--model", str(tiny_model_dir), "--dtype", "float32", "--max-length", "256", "--task-max-length",
                 "64", "--output", str(out), "--batch-size", "2"]) == 0
    printed = capsys.readouterr().out
    assert "gold_score" in printed and "rows: 4 (4 scored now" in printed
    got = datasets.load_from_disk(str(out))
    reference = rows.map(GoldScorer(str(tiny_model_dir), task_set=str(tmp_path / "tasks.jsonl"), dtype="float32",
                                    max_length=256, task_max_length=64), batched=True, batch_size=2)
    assert got["row_id"] == [0, 1, 2, 3] and got["n_tasks"] == reference["n_tasks"] == [3] * 4
    np.testing.assert_allclose(got["gold_score"], reference["gold_score"])
    np.testing.assert_allclose(got["gold_delta"], reference["gold_delta"], rtol=1e-5)


def test_score_refuses_to_mix_settings_and_says_what_to_do(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "scored"
    work = tmp_path / "scored.parts"
    work.mkdir()
    (work / "part-000000000000-000000000001.parquet").write_bytes(b"")  # unfinished work of another run
    (work / "manifest.json").write_text(json.dumps({"format": 1, "identity": {"scorer": {"model": "other"}}}))
    args = ["score", "demo", "--model", str(tiny_model_dir), "--output", str(out), "--limit", "2", "--show", "0"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "another run" in err and "--fresh" in err
    assert main(args + ["--fresh"]) == 0
    assert datasets.load_from_disk(str(out))["row_id"] == [0, 1]


def test_score_rejects_bad_options(capsys):
    assert main(["score", "demo", "--template", "fancy"]) == 2
    assert "unknown template 'fancy'" in capsys.readouterr().err


def test_score_column_mapping_option(tiny_model_dir, tmp_path, capsys):
    datasets.Dataset.from_dict({"q": ["Say hi.", "Count to three."], "a": ["hi", "one two three"]}).to_json(
        str(tmp_path / "qa.jsonl"))
    args = ["score", str(tmp_path / "qa.jsonl"), "--model", str(tiny_model_dir), "--output", str(tmp_path / "out"),
            "--show", "2"]
    assert main(args + ["--columns", "instruction:q,response:a"]) == 2
    assert "--columns takes KEY=COLUMN pairs" in capsys.readouterr().err
    assert main(args + ["--columns", "instruction=q,response=a"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert "Say hi." in table[1] and "Count to three." in table[2]  # the table reads the mapped columns
    scored = datasets.load_from_disk(str(tmp_path / "out"))
    assert scored.column_names[:3] == ["row_id", "q", "a"] and all(math.isfinite(v) for v in scored["ifd"])


# -- baselines, length profiles and the evidence (issue 20) ---------------------------------------------------------

@pytest.fixture(scope="module")
def varied(tmp_path_factory):
    """Rows with responses of 1-20 words (ties), n_response_tokens = 3 x words, IFD rising with length."""
    rng = np.random.default_rng(11)
    words = rng.integers(1, 21, 50).tolist()
    ds = datasets.Dataset.from_dict({
        "row_id": list(range(50)), "instruction": [f"Task {i}: write." for i in range(50)], "input": [""] * 50,
        "output": [" ".join(["w"] * k) for k in words], "n_response_tokens": [3 * k for k in words],
        "ifd": [min(0.99, k / 25 + float(rng.uniform(0, 0.1))) for k in words]})
    path = tmp_path_factory.mktemp("varied") / "scored"
    ds.save_to_disk(str(path))
    return path, ds


def test_select_random_and_longest_baselines_match_plain_python(varied, tmp_path, capsys):
    path, ds = varied
    assert main(["select", str(path), "--rule", "random", "--top-n", "7", "--seed", "3", "--output",
                 str(tmp_path / "r")]) == 0
    drawn = np.random.default_rng(3).permutation(50)[:7].tolist()
    assert datasets.load_from_disk(str(tmp_path / "r"))["row_id"] == drawn
    out = capsys.readouterr().out
    assert "selection random-top7-seed3: kept 7 of 50 rows" in out and "43 not_drawn" in out
    assert main(["select", str(path), "--rule", "longest", "--top-fraction", "0.2",
                 "--output", str(tmp_path / "l")]) == 0
    lengths = ds["n_response_tokens"]
    assert datasets.load_from_disk(str(tmp_path / "l"))["row_id"] == sorted(range(50), key=lambda i: (-lengths[i], i))[:10]
    out = capsys.readouterr().out
    # The length profile: all rows against the selected, and IFD's rank correlation with length (scipy's).
    from scipy.stats import spearmanr

    rho = spearmanr(ds["ifd"], lengths).statistic
    assert f"response length (n_response_tokens): all rows mean {np.mean(lengths):.1f}" in out
    assert f"selected mean {np.mean(sorted(lengths)[-10:]):.1f}" in out
    assert f"Spearman with response length (all rows): ifd {rho:+.3f}" in out


def test_select_longest_by_tokens_counts_with_the_named_tokenizer(varied, tmp_path, tiny_model_dir, capsys):
    from transformers import AutoTokenizer

    path, ds = varied
    assert main(["select", str(path), "--rule", "longest", "--top-n", "6", "--by", "tokens", "--tokenizer",
                 str(tiny_model_dir), "--output", str(tmp_path / "t")]) == 0
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    counts = [len(tokenizer(text, add_special_tokens=False)["input_ids"]) for text in ds["output"]]
    expected = sorted(range(50), key=lambda i: (-counts[i], i))[:6]
    assert datasets.load_from_disk(str(tmp_path / "t"))["row_id"] == expected
    assert main(["select", str(path), "--rule", "longest", "--top-n", "6", "--tokenizer", str(tiny_model_dir),
                 "--output", str(tmp_path / "x")]) == 2
    assert "--tokenizer counts lengths for --by tokens only" in capsys.readouterr().err


def test_select_length_matched_follows_the_reference(varied, tmp_path, capsys):
    from hf_prospector.selection import length_matched_random, select

    path, ds = varied
    assert main(["select", str(path), "--top-n", "10", "--output", str(tmp_path / "top.parquet")]) == 0
    args = ["select", str(path), "--rule", "length-matched", "--reference", str(tmp_path / "top.parquet"),
            "--seed", "2", "--bins", "4", "--output", str(tmp_path / "lm")]
    assert main(args) == 0
    reference = datasets.Dataset.from_parquet(str(tmp_path / "top.parquet"))
    expected, _ = select(ds, length_matched_random(reference, seed=2, bins=4))
    assert datasets.load_from_disk(str(tmp_path / "lm"))["row_id"] == expected["row_id"]
    assert re.search(r"selection length-matched-random-10-4bins-seed2-\w+: kept 10 of 50 rows", capsys.readouterr().out)


@pytest.mark.parametrize("options, message", [
    (["--rule", "length-matched", "--top-n", "3"], "--rule length-matched draws as many rows as --reference"),
    (["--rule", "random", "--threshold", "0.5"], "--rule random keeps --top-fraction F or --top-n N rows"),
    (["--rule", "longest", "--top-n", "3", "--reference", "x"], "--reference applies to --rule length-matched only"),
    ([], "give one of --top-fraction, --top-n or --threshold"),
])
def test_select_baseline_options_are_checked(varied, tmp_path, capsys, options, message):
    path, _ = varied
    assert main(["select", str(path), *options, "--output", str(tmp_path / "x")]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_card_and_assess_show_the_length_profile(varied, tmp_path, capsys):
    path, ds = varied
    assert main(["select", str(path), "--rule", "longest", "--top-n", "5", "--output", str(tmp_path / "sel")]) == 0
    assert main(["card", str(path), "--selected", str(tmp_path / "sel"), "--out", str(tmp_path / "card")]) == 0
    card = (tmp_path / "card" / "README.md").read_text()
    lengths = sorted(ds["n_response_tokens"])
    assert "## Length" in card and f"| response (n_response_tokens) | selected | 5 | 0 | {np.mean(lengths[-5:]):.1f} |" in card
    assert main(["report", "assess", f"mine={path}", "--fraction", "0.2"]) == 2  # no perplexity columns: refused
    capsys.readouterr()
    full = ds.map(lambda r: {"ppl_cond": r["ifd"] * 3, "ppl_uncond": 3.0})
    full.save_to_disk(str(tmp_path / "full"))
    assert main(["report", "assess", f"mine={tmp_path / 'full'}", "--fraction", "0.2"]) == 0
    out = capsys.readouterr().out
    from scipy.stats import spearmanr

    assert "## Length" in out and f"| `ifd` | {spearmanr(ds['ifd'], ds['n_response_tokens']).statistic:.3f} |" in out


def test_evaluate_command_trains_the_arms_and_the_baselines(varied, tiny_model_dir, tmp_path, capsys):
    pytest.importorskip("trl")
    path, ds = varied
    assert main(["select", str(path), "--top-n", "6", "--output", str(tmp_path / "ifd.parquet")]) == 0
    held_out = datasets.Dataset.from_dict({"instruction": [f"Explain {i}." for i in range(8)],
                                           "output": [" ".join(["w"] * (i + 1)) for i in range(8)]})
    held_out.to_json(str(tmp_path / "eval.jsonl"))
    out = tmp_path / "evidence"
    args = ["evaluate", f"ifd={tmp_path / 'ifd.parquet'}", "--pool", str(path), "--random-seeds", "0,1", "--longest",
            "--length-matched", "--eval", f"held={tmp_path / 'eval.jsonl'}", "--base-model", str(tiny_model_dir),
            "--steps", "1", "--batch-size", "2", "--draws", "200", "--out", str(out)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    stored = json.loads((out / "evidence.json").read_text())
    assert set(stored["arms"]) == {"base", "ifd", "random-0", "random-1", "longest", "length-matched"}
    assert stored["comparison"]["held"]["baseline_arms"] == ["random-0", "random-1"]
    # Each baseline arm trained on the rows its rule picks: its response tokens, counted here with the tokenizer.
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    count = lambda rows: sum(len(tokenizer(ds["output"][i], add_special_tokens=False)["input_ids"]) for i in rows)
    assert stored["arms"]["random-1"]["training_tokens"] == count(np.random.default_rng(1).permutation(50)[:6])
    lengths = ds["n_response_tokens"]
    assert stored["arms"]["longest"]["training_tokens"] == count(sorted(range(50), key=lambda i: (-lengths[i], i))[:6])
    assert all(stored["arms"][a]["rows"] == 6 for a in stored["arms"] if a != "base")
    assert "| longest | 6 |" in printed and f"evidence written to {out}" in printed
    # A second run reuses every arm; a bad input is one line naming it.
    assert main(args) == 0
    assert capsys.readouterr().out.count("already trained and evaluated with these settings") == 5
    assert main(["evaluate", "--random-seeds", "0", "--eval", str(tmp_path / "eval.jsonl"), "--out", str(out)]) == 2
    assert "draw rows from --pool" in capsys.readouterr().err
    held_out.select_columns(["instruction"]).to_json(str(tmp_path / "questions.jsonl"))
    assert main(["evaluate", f"ifd={tmp_path / 'ifd.parquet'}", "--eval", f"q={tmp_path / 'questions.jsonl'}",
                 "--base-model", str(tiny_model_dir), "--out", str(tmp_path / "x")]) == 2
    assert "evaluation set 'q': no instruction/response columns" in capsys.readouterr().err
