"""Compare arms: paired differences in eval loss with bootstrap 95% intervals, and the report (Markdown, JSON, plot).

Each arm is compared with a baseline (default: the random arms) row by row on the same evaluation rows, so the
row-to-row variation in difficulty cancels: ``d_i = loss_arm_i - loss_baseline_i``. The interval is the percentile
bootstrap of ``mean(d)`` over the evaluation rows (``draws`` resamples of the rows, with replacement). With several
random arms (seeds) the baseline is their row-wise mean, and the spread of their mean losses shows how far two
random draws of the same size differ by chance: a gap smaller than that is noise.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from ..reports import _json_ready
from ..utils import format_number, markdown_table

LEVEL = 0.95


def bootstrap_interval(diffs: np.ndarray, draws: int = 10000, seed: int = 0, level: float = LEVEL) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``diffs``: ``draws`` resamples of the rows, drawn as
    ``default_rng(seed).integers(0, n, size=(draws, n))``."""
    diffs = np.asarray(diffs, dtype=np.float64)
    if len(diffs) == 0:
        return math.nan, math.nan
    means = diffs[np.random.default_rng(seed).integers(0, len(diffs), size=(draws, len(diffs)))].mean(axis=1)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(low), float(high)


def baseline_arms(names: list[str], baseline: str) -> list[str]:
    """The arms that form the baseline: the one named ``baseline``, or those named ``baseline-...`` (seeds)."""
    exact = [n for n in names if n == baseline]
    group = exact or [n for n in names if n.startswith(baseline + "-") or n.startswith(baseline + "_")]
    if not group:
        raise ValueError(f"no arm is the baseline {baseline!r} (arms: {names}); name one arm {baseline!r} or "
                         f"{baseline!r}-<seed>, or pass baseline= one of the arms")
    return group


def comparisons(losses: dict[str, np.ndarray], baseline: str, draws: int = 10000, seed: int = 0) -> dict:
    """Per arm: mean eval loss, perplexity, and the paired difference from the baseline with its interval."""
    names = [n for n in losses if n != "base"]
    group = baseline_arms(names, baseline)
    reference = np.mean([losses[n] for n in group], axis=0)
    out = {}
    for name, loss in losses.items():
        diff = loss - reference
        low, high = bootstrap_interval(diff, draws, seed)
        out[name] = {"eval_loss": float(loss.mean()), "perplexity": float(math.exp(loss.mean())),
                     "diff_vs_baseline": float(diff.mean()), "ci_low": low, "ci_high": high,
                     "in_baseline": name in group}
    means = [float(losses[n].mean()) for n in group]
    spread = {"arms": group, "mean_losses": means, "sd": float(np.std(means, ddof=1)) if len(means) > 1 else None,
              "range": float(max(means) - min(means))}
    return {"baseline": baseline, "baseline_arms": group, "seed_spread": spread, "arms": out,
            "level": LEVEL, "draws": draws}


def write_report(result: dict, out_dir: str | Path) -> dict[str, Path]:
    """``report.md``, ``evidence.json`` and ``evidence.png`` (paired differences with their intervals)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "evidence.json", "markdown": out / "report.md", "plot": out / "evidence.png"}
    paths["json"].write_text(json.dumps(_json_ready(result), indent=2))
    paths["markdown"].write_text(to_markdown(result))
    plot(result, paths["plot"])
    return paths


def to_markdown(result: dict, level: int = 1) -> str:
    """The report; ``level`` is its title's heading level (2 inside a dataset card)."""
    arms = result["arms"]
    lines = [f"{'#' * level} Evidence: fine-tuned arms compared", "",
             f"Base model `{result['base_model']}`; settings: `{json.dumps(result['settings'])}`; encoding: "
             f"`{json.dumps(result['encoding'])}`."]
    for set_name, cmp in result["comparison"].items():
        rows = []
        for name, c in cmp["arms"].items():
            a = arms[name]
            diff = "—" if name == "base" else f"{c['diff_vs_baseline']:+.4f} [{c['ci_low']:+.4f}, {c['ci_high']:+.4f}]"
            rows.append([name, a["rows"], a["training_tokens"], format_number(a["mean_response_tokens"], ".1f"),
                         format_number(c["eval_loss"], ".4f"), format_number(c["perplexity"], ".2f"), diff,
                         a.get("eval_overlap", {}).get(set_name, 0)])
        spread = cmp["seed_spread"]
        lines += [
            "", f"{'#' * (level + 1)} Evaluation set `{set_name}`: {result['eval_rows'][set_name]} rows "
                f"({result['eval_unusable'][set_name]} unusable)", "",
            markdown_table(["arm", "rows", "training tokens", "mean response tokens", "eval loss", "perplexity",
                          f"diff vs {cmp['baseline']} [{int(cmp['level'] * 100)}% CI]", "eval rows also trained"], rows),
            "",
            f"Differences are paired over the evaluation rows (arm minus the mean of "
            f"{', '.join(cmp['baseline_arms'])}); intervals are percentile bootstraps of {cmp['draws']} resamples. "
            "Negative is better (lower loss)."]
        if spread["sd"] is not None:
            lines += ["", f"Seed-to-seed spread of the baseline arms' eval loss: sd {spread['sd']:.4f}, range "
                          f"{spread['range']:.4f} over {len(spread['arms'])} seeds. A gap smaller than this is noise."]
        if result.get("generation"):
            lines += generation_table(result, set_name)
    if result.get("warnings"):
        lines += ["", f"{'#' * (level + 1)} Warnings", ""] + [f"- {w}" for w in result["warnings"]]
    return "\n".join(lines) + "\n"


def generation_table(result: dict, set_name: str) -> list[str]:
    """The arms' generation metrics on one evaluation set (higher is better for ROUGE)."""
    settings = result["generation"]
    values = {name: arm.get("generation", {}).get(set_name, {}) for name, arm in result["arms"].items()}
    keys = sorted({k for v in values.values() for k in v})
    rows = [[name] + [format_number(v.get(k), ".4f") for k in keys] for name, v in values.items()]
    return ["", f"Generation metrics: greedy answers of at most {settings['max_new_tokens']} tokens to the first "
                f"{settings['rows']} rows, against the references ({', '.join(settings['metrics'])}, by evaluate).",
            "", markdown_table(["arm"] + keys, rows)]


def plot(result: dict, path: Path) -> Path:
    """One panel per evaluation set: each arm's paired difference from the baseline, with its interval."""
    panels = result["comparison"]
    names = [n for n in next(iter(panels.values()))["arms"] if n != "base"]
    fig = Figure(figsize=(len(panels) * (1.5 + 0.9 * len(names)), 4), layout="constrained")
    for ax, (set_name, cmp) in zip(np.atleast_1d(fig.subplots(1, len(panels))), panels.items()):
        diffs = np.array([cmp["arms"][n]["diff_vs_baseline"] for n in names])
        low = diffs - np.array([cmp["arms"][n]["ci_low"] for n in names])
        high = np.array([cmp["arms"][n]["ci_high"] for n in names]) - diffs
        colors = ["grey" if cmp["arms"][n]["in_baseline"] else "tab:blue" for n in names]
        ax.bar(range(len(names)), diffs, yerr=[low, high], capsize=4, color=colors)
        ax.axhline(0, color="black", linewidth=0.8)
        ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
        ax.set_title(set_name)
        ax.set_ylabel(f"eval loss minus {cmp['baseline']} (95% CI; lower is better)")
    fig.savefig(path, dpi=120)
    return path

