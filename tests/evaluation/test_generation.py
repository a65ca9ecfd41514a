"""Generation metrics of the evidence: greedy answers, batched with left padding, scored by an ``evaluate`` metric.

The metric is a local script (``evaluate.load`` of a path works offline): the count of answer words over
reference words, which the test recomputes from answers generated one row at a time without padding."""

from __future__ import annotations

import json
import textwrap

import pytest
import torch

pytest.importorskip("trl")
pytest.importorskip("evaluate")

from hf_prospector.evaluation import GenerationMetrics, TrainSettings, encode_set, generate_answers, run_evidence
from hf_prospector.evaluation.data import Encoding
from hf_prospector.models import load_causal_lm
from tests.evaluation.test_evaluation import alpaca

METRIC = '''
import datasets
import evaluate


class WordRatio(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(description="answer words over reference words", citation="", inputs_description="",
                                   features=datasets.Features({"predictions": datasets.Value("string"),
                                                               "references": datasets.Value("string")}))

    def _compute(self, predictions, references):
        return {"word_ratio": sum(len(p.split()) for p in predictions) / max(1, sum(len(r.split()) for r in references)),
                "first_answer": predictions[0]}
'''


@pytest.fixture
def metric_path(tmp_path):
    folder = tmp_path / "word_ratio"
    folder.mkdir()
    (folder / "word_ratio.py").write_text(textwrap.dedent(METRIC))
    return str(folder)


def test_batched_answers_equal_one_row_at_a_time(tiny_model_dir):
    model, tokenizer = load_causal_lm(str(tiny_model_dir))
    encoded = encode_set(alpaca(5), "eval", tokenizer, Encoding(min_response_tokens=1))
    settings = GenerationMetrics(metrics=(), max_new_tokens=6, rows=4, batch_size=3)  # two batches, left-padded
    answers, references = generate_answers(model, tokenizer, encoded, settings)
    assert len(answers) == 4
    with torch.inference_mode():
        for k in range(4):
            prompt = torch.tensor([encoded.ids[k][:encoded.starts[k]]])
            out = model.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=6,
                                 do_sample=False, pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id)
            assert answers[k] == tokenizer.decode(out[0, prompt.shape[1]:], skip_special_tokens=True)
            assert references[k] == tokenizer.decode(encoded.ids[k][encoded.starts[k]:], skip_special_tokens=True)


def test_run_evidence_reports_each_arms_generation_metric(tiny_model_dir, metric_path, tmp_path):
    settings = GenerationMetrics(metrics=(metric_path,), max_new_tokens=5, rows=3)
    result = run_evidence({"a": alpaca(4), "random-0": alpaca(4, offset=10)}, alpaca(4, offset=30), tmp_path / "ev",
                          base_model=str(tiny_model_dir), settings=TrainSettings(steps=1, batch_size=2),
                          encoding=Encoding(min_response_tokens=1), generation=settings, log=lambda _: None)
    model, tokenizer = load_causal_lm(str(tiny_model_dir))
    encoded = encode_set(alpaca(4, offset=30), "eval", tokenizer, Encoding(min_response_tokens=1))
    answers, references = generate_answers(model, tokenizer, encoded, settings)
    expected = sum(len(a.split()) for a in answers) / max(1, sum(len(r.split()) for r in references))
    assert result["arms"]["base"]["generation"]["eval"] == {"word_ratio": pytest.approx(expected)}  # text dropped
    assert set(result["arms"]["a"]["generation"]["eval"]) == {"word_ratio"}
    report = (tmp_path / "ev" / "report.md").read_text()
    assert "Generation metrics: greedy answers of at most 5 tokens to the first 3 rows" in report
    assert json.loads((tmp_path / "ev" / "evidence.json").read_text())["generation"]["rows"] == 3


def test_a_metric_that_cannot_load_fails_before_any_arm_trains(tiny_model_dir, tmp_path):
    with pytest.raises(RuntimeError, match="generation metric 'no-such-metric-here' could not be loaded"):
        run_evidence({"a": alpaca(2)}, alpaca(2, offset=30), tmp_path / "ev", base_model=str(tiny_model_dir),
                     generation=GenerationMetrics(metrics=("no-such-metric-here",)), log=lambda _: None)
    assert not (tmp_path / "ev").exists()
