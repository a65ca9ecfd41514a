"""assess(): summary statistics, leading words of the top/bottom rows by IFD, figures; leading_word()."""

import json
import math

import numpy as np
import pytest
from datasets import Dataset
from matplotlib.image import imread

from hf_prospector.reports import assess, leading_word

NAN = float("nan")


def alpaca_scored() -> Dataset:
    """24 Alpaca rows, 22 eligible (row 0 has IFD >= 1, row 4 NaN). With fraction 0.15 the top and the
    bottom hold floor(0.15 * 22) = 3 rows each:
    top = rows 1, 2, 3 -> write 2, explain 1;  bottom = rows 23, 22, 5 (lowest IFD) -> classify 2, describe 1."""
    rows = [("Write a poem.", 1.2), ("Write a poem.", .9), ("write: a story", .8), ("Explain gravity", .7),
            ("Name a colour", NAN)]
    rows += [(f"Describe item {i}", .3 + .01 * i) for i in range(5, 22)]  # .35 ... .51
    rows += [("“Classify” this", .1), ("  classify these", .05)]
    ifd = [v for _, v in rows]
    n = len(rows)
    return Dataset.from_dict({"instruction": [t for t, _ in rows], "input": [""] * n, "output": ["ok"] * n,
                              "ifd": ifd, "ppl_cond": [2 * v for v in ifd], "ppl_uncond": [2.0] * n})


def chat_scored() -> Dataset:
    """10 chat rows; floor(0.15 * 10) = 1 row each way. The instruction is the last user turn."""
    texts = ["How do I sort?"] + [f"Tell me fact {i}" for i in range(1, 9)] + ["Summarize this."]
    messages = [[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"},
                 {"role": "assistant", "content": "hello"}, {"role": "user", "content": t},
                 {"role": "assistant", "content": "sure"}] for t in texts]
    ifd = [.95] + [.5] * 8 + [.2]
    return Dataset.from_dict({"messages": messages, "ifd": ifd, "ppl_cond": [3.0] * 10, "ppl_uncond": [4.0] * 10})


def test_leading_words_of_top_and_bottom_rows():
    report = assess({"alpaca": alpaca_scored(), "chat": chat_scored()}, fraction=0.15)
    alpaca, chat = report.datasets["alpaca"], report.datasets["chat"]
    assert (alpaca.top_rows, alpaca.bottom_rows, alpaca.out_of_range) == (3, 3, 1)
    assert alpaca.top_words == [("write", 2), ("explain", 1)]
    assert alpaca.bottom_words == [("classify", 2), ("describe", 1)]
    assert chat.top_words == [("how", 1)] and chat.bottom_words == [("summarize", 1)]


def test_summary_statistics_match_hand_computed_values():
    ds = Dataset.from_dict({"instruction": ["a"] * 5, "output": ["b"] * 5, "ifd": [.2, .4, NAN, .6, .8],
                            "ppl_cond": [1.0] * 5, "ppl_uncond": [NAN] * 5})
    report = assess({"d": ds})
    s = report.datasets["d"].scores["ifd"]
    # finite values .2 .4 .6 .8: mean .5; population std sqrt((.09+.01+.01+.09)/4); linear quartiles
    # at positions 0.75 and 2.25 -> .35 and .65.
    assert (s.count, s.missing) == (4, 1)
    got = [s.mean, s.std, s.min, s.q25, s.median, s.q75, s.max]
    assert got == pytest.approx([.5, math.sqrt(.05), .2, .35, .5, .65, .8])
    empty = report.datasets["d"].scores["ppl_uncond"]
    assert (empty.count, empty.missing) == (0, 5) and math.isnan(empty.mean)
    # floor(0.05 * 5) = 0 rows each way: nothing to count, which the report says rather than hides
    assert report.datasets["d"].top_words == [] and "— (0 rows)" in report.to_markdown()


def test_report_renders_markdown_json_and_violin_pngs(tmp_path):
    report = assess({"alpaca": alpaca_scored(), "chat": chat_scored()}, out_dir=tmp_path, fraction=0.15)
    text = (tmp_path / "report.md").read_text()
    assert text == report.to_markdown()
    assert "| alpaca | write 2, explain 1 (3 rows) | classify 2, describe 1 (3 rows) |" in text
    assert "| alpaca | 1 | 4.2% |" in text  # 1 of 24 rows has IFD >= 1
    for key in ("ifd_violin", "perplexity_violin"):
        assert f"]({key}.png)" in text
        image = imread(report.figures[key])
        assert image.shape[0] > 100 and np.ptp(image[..., :3]) > 0
    data = json.loads(json.dumps(report.to_dict(), allow_nan=False))
    assert data["datasets"]["chat"]["top_words"] == [["how", 1]]


def test_missing_score_column_is_named():
    with pytest.raises(ValueError, match=r"dataset 'raw' lacks the score columns \['ppl_cond', 'ppl_uncond', 'ifd'\]"):
        assess({"raw": Dataset.from_dict({"instruction": ["a"], "output": ["b"]})})


@pytest.mark.parametrize("text, word", [("Write a poem.", "write"), ("“Classify” this", "classify"),
                                        ("  don't stop", "don't"), ("Über alles", "über"), ("!!!", ""), ("", "")])
def test_leading_word(text, word):
    assert leading_word(text) == word


def test_language_mix_and_rows_outside_the_model_languages(tmp_path, capsys):
    from hf_prospector.cli import main

    ds = alpaca_scored()
    chinese = ds.select(range(6)).map(lambda r: {"instruction": "请写一首关于秋天的诗。", "output": "秋叶慢慢落下。"})
    from datasets import concatenate_datasets

    mixed = concatenate_datasets([chinese, ds.select(range(6, len(ds)))])
    model = tmp_path / "english_model"
    model.mkdir()
    (model / "README.md").write_text("---\nlanguage: en\n---\n")
    report = assess({"mixed": mixed}, fraction=0.15, model=str(model))
    mix = report.datasets["mixed"].languages
    assert dict(mix.counts)["zh"] == 6 and mix.model_languages == ("en",) and mix.outside >= 6
    assert f"{mix.outside / 24:.1%} of rows are in other languages" in report.to_markdown()
    assert report.to_dict()["datasets"]["mixed"]["languages"]["outside"] == mix.outside
    mixed.save_to_disk(tmp_path / "mixed")
    assert main(["report", "assess", f"mixed={tmp_path / 'mixed'}", "--fraction", "0.15", "--model", str(model)]) == 0
    assert "of rows are in other languages" in capsys.readouterr().out
