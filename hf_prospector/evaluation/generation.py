"""Optional generation metrics: each model answers the evaluation instructions (greedy decoding) and metrics of the
``evaluate`` package (e.g. ``"rouge"``: ROUGE-L and others) compare its answers with the reference responses.

Loss says how likely a model finds the references; these say what it writes. Generating is slow on a CPU (every
answer token is a forward pass), so only the first ``GenerationMetrics.rows`` rows of each evaluation set are used.
``evaluate.load`` fetches a metric's script from the Hub: offline, pass the path of a local copy of its folder.
"""

from __future__ import annotations

import importlib.util
from dataclasses import asdict, dataclass

import torch

from .data import EncodedSet

INSTALL_HINT = "pip install evaluate   (ROUGE also needs: pip install rouge_score)"


@dataclass(frozen=True)
class GenerationMetrics:
    """``metrics``: names (or local paths) ``evaluate.load`` accepts; the answers are greedy, at most
    ``max_new_tokens`` long, for the first ``rows`` rows of each evaluation set."""

    metrics: tuple[str, ...] = ("rouge",)
    max_new_tokens: int = 128
    rows: int = 100
    batch_size: int = 8

    def to_dict(self) -> dict:
        return asdict(self)


def load_metrics(names: tuple[str, ...]) -> dict:
    """The ``evaluate`` metrics, loaded before any arm trains, so a metric that cannot load fails first."""
    if importlib.util.find_spec("evaluate") is None:
        raise ImportError(f"generation metrics need the evaluate package: {INSTALL_HINT}")
    import evaluate

    loaded = {}
    for name in names:
        try:
            loaded[name] = evaluate.load(name)
        except Exception as err:  # noqa: BLE001 -- evaluate raises many kinds; all mean the same to the user
            raise RuntimeError(f"generation metric {name!r} could not be loaded ({type(err).__name__}: "
                               f"{str(err).splitlines()[0] if str(err) else ''}). evaluate.load fetches a metric from "
                               f"the Hub; offline, give the path of a local copy of its folder ({INSTALL_HINT})") from None
    return loaded


@torch.inference_mode()
def generate_answers(model, tokenizer, encoded: EncodedSet, settings: GenerationMetrics) -> tuple[list[str], list[str]]:
    """Greedy answers to the first ``settings.rows`` rows (their prompt ids, exactly as scored), and the reference
    responses, both as text."""
    n = min(settings.rows, len(encoded.ids))
    prompts = [encoded.ids[k][:encoded.starts[k]] for k in range(n)]
    references = [tokenizer.decode(encoded.ids[k][encoded.starts[k]:], skip_special_tokens=True) for k in range(n)]
    pad = next(t for t in (tokenizer.pad_token_id, tokenizer.eos_token_id, 0) if t is not None)
    device = next(model.parameters()).device
    answers: list[str] = []
    for s in range(0, n, settings.batch_size):
        batch = prompts[s: s + settings.batch_size]
        width = max(len(p) for p in batch)
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in batch], device=device)  # left-padded
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in batch], device=device)
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=settings.max_new_tokens,
                             do_sample=False, pad_token_id=pad)
        answers += tokenizer.batch_decode(out[:, width:], skip_special_tokens=True)
    return answers, references


def metric_values(metrics: dict, answers: list[str], references: list[str]) -> dict[str, float]:
    """Each metric's numeric results (``rouge``: ``rouge1``, ``rouge2``, ``rougeL``, ``rougeLsum``) as floats."""
    values = {}
    for name, metric in metrics.items():
        for key, value in metric.compute(predictions=answers, references=references).items():
            if isinstance(value, (int, float)):
                values[key if len(metrics) == 1 else f"{name}/{key}"] = float(value)
    return values
