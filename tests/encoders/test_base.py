"""The encoder registry: the one list of conventions per score, open to conventions registered from outside."""

import pytest

from hf_prospector.encoders import ENCODERS, Encoder, PairEncoder, conventions, register


def test_every_registered_encoder_tokenizes_through_the_one_wrapper():
    assert conventions("ifd") == ("exact", "superfiltering", "cherry") and conventions("gold") == ("exact", "nuggets")
    assert all(issubclass(cls, Encoder) for by_name in ENCODERS.values() for cls in by_name.values())


def test_a_registered_convention_is_scored_without_touching_the_scorer(tiny_model_dir, monkeypatch):
    """The registry is the only list of conventions: one registered from outside is one IFDScorer scores with."""
    import datasets

    from hf_prospector.scorers import IFDScorer

    monkeypatch.setitem(ENCODERS, "ifd", dict(ENCODERS["ifd"]))  # registered for this test only

    @register("ifd", "alpaca_exact")
    class AlpacaExact(PairEncoder):
        fixed_template = "alpaca"
        default_max_length = 256

        def __init__(self, tokenizer, template, max_length, min_response_tokens, budget=None):
            super().__init__(tokenizer, template, max_length, 4, budget)

    rows = datasets.Dataset.from_dict({"instruction": ["Translate.", "Say hi."], "input": ["Hello", ""],
                                       "output": ["Bonjour", "hello there"]})
    scorer = IFDScorer(str(tiny_model_dir), convention="alpaca_exact", dtype="float32")
    assert (scorer.template, scorer.max_length, scorer.min_response_tokens) == ("alpaca", 256, None)
    mine = rows.map(scorer, batched=True)
    exact = rows.map(IFDScorer(str(tiny_model_dir), template="alpaca", max_length=256, min_response_tokens=4,
                               dtype="float32"), batched=True)
    assert mine["ifd"] == pytest.approx(exact["ifd"], abs=1e-6) and all(v > 0 for v in mine["ifd"])
    with pytest.raises(ValueError, match=r"'exact', 'superfiltering', 'cherry', 'alpaca_exact'"):
        IFDScorer(convention="nope")
