"""What a publication says about itself: the recipe (provenance), the commit message and the dataset card.

The card is a ``huggingface_hub.DatasetCard``: YAML metadata (license, size category, task categories;
the publishers add ``configs`` and ``dataset_info``) and a Markdown section between two HTML comments,
so that publishing again replaces this library's section and keeps the rest of an existing card. The
section holds a provenance table, per score column the statistics of all rows and of the selected rows,
and PNG figures written next to the card (``figures/``) and linked with relative paths, which the Hub
renders: a histogram per score column (all rows and selected rows overlaid, the threshold marked) and
a violin plot of IFD, the Superfiltering paper's view of a dataset. Figures are drawn on
``matplotlib.figure.Figure`` (Agg canvas): no pyplot state, no display.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from datasets import Dataset, DatasetDict, concatenate_datasets
from huggingface_hub import DatasetCard, DatasetCardData

import hf_prospector
from hf_prospector._lazy import lazy_attributes
from hf_prospector.utils import (ROW_ID, float_column, format_number, markdown_table, new_figure, numeric_kind,
                                 renamed_keyword, require_unique_row_ids, violin_figure)

# Score columns the library writes, in the order the card shows them.
CARD_COLUMNS = ("ifd", "ifd_loss", "ppl_cond", "ppl_uncond", "loss_cond", "loss_uncond", "gold_score", "gold_delta")
# Provenance keys in the order the card and the commit message show them; other keys follow, sorted.
PROVENANCE_ORDER = ("source", "source_revision", "fingerprint", "scorer", "model", "model_revision", "template",
                    "convention", "max_length", "selection_rule", "selection_rule_slug", "rows_in", "rows_selected",
                    "license", "library_version")
SECTION_START = "<!-- hf_prospector:start -->"
SECTION_END = "<!-- hf_prospector:end -->"
FIGURES_DIR = "figures"
QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)
STAT_HEADER = ["score", "rows", "count", "NaN", "min", "q05", "q25", "median", "q75", "q95", "mean", "max"]
# The Hub's size_categories buckets (upper bounds), as in datasets/utils/resources/size_categories.json.
SIZE_CATEGORIES = ((10**3, "n<1K"), (10**4, "1K<n<10K"), (10**5, "10K<n<100K"), (10**6, "100K<n<1M"),
                   (10**7, "1M<n<10M"), (10**8, "10M<n<100M"), (10**9, "100M<n<1B"), (10**10, "1B<n<10B"),
                   (10**11, "10B<n<100B"), (10**12, "100B<n<1T"))

Provenance = dict[str, Any]  # recipe facts, e.g. {"source": "tatsu-lab/alpaca", "scorer": "ifd", ...}


@dataclass(frozen=True)
class Publication:
    """Where a publish went: ``revision`` (branch, or ``refs/pr/N``) and its head ``commit``."""

    revision: str
    commit: str
    location: str  # the local repository path or the Hub repo URL
    pr_url: str | None = None
    unchanged: bool = False  # the revision already held exactly this: no new commit was made


# -- the recipe -----------------------------------------------------------------------------------------------
def as_dataset_dict(selected: Dataset | DatasetDict) -> DatasetDict:
    """The splits to publish: a bare ``Dataset`` becomes the ``train`` split."""
    if isinstance(selected, DatasetDict):
        if not selected:
            raise ValueError("the DatasetDict to publish has no splits")
        return selected
    if isinstance(selected, Dataset):
        return DatasetDict({"train": selected})
    raise TypeError(f"expected a datasets.Dataset or DatasetDict to publish, got {type(selected).__name__}")


def require_rows(splits: DatasetDict, allow_empty: bool) -> None:
    """Refuse to publish a selection that kept no rows, unless asked to (an empty revision is rarely meant)."""
    if not allow_empty and sum(len(split) for split in splits.values()) == 0:
        raise ValueError("the selection kept 0 rows: nothing to publish; loosen the rule, or publish it anyway "
                         "with allow_empty=True (--allow-empty; a recipe's publish.allow_empty: true)")


def complete_provenance(provenance: Mapping[str, Any] | None, selected: Dataset | DatasetDict | None = None,
                        scored: Dataset | None = None) -> Provenance:
    """A copy with the counts and library version filled in; counts that contradict the data are an error."""
    facts = dict(provenance or {})
    facts.setdefault("library_version", hf_prospector.__version__)
    counts = {}
    if selected is not None:
        counts["rows_selected"] = sum(len(split) for split in as_dataset_dict(selected).values())
    if scored is not None:
        counts["rows_in"] = len(scored)
    for key, actual in counts.items():
        if key in facts and str(facts[key]) != str(actual):
            raise ValueError(f"provenance[{key!r}] = {facts[key]!r} but the data has {actual} rows; "
                             f"fix the provenance or leave {key!r} out to have it counted.")
        facts[key] = actual
    return facts


def _ordered(provenance: Mapping[str, Any]) -> list[tuple[str, str]]:
    keys = [k for k in PROVENANCE_ORDER if k in provenance] + sorted(k for k in provenance if k not in PROVENANCE_ORDER)
    return [(k, " ".join(str(provenance[k]).split())) for k in keys if provenance[k] is not None]


def commit_message(provenance: Mapping[str, Any]) -> tuple[str, str]:
    """``(summary, description)``: one line naming rule, source and counts, then every fact as ``key: value``."""
    rule = provenance.get("selection_rule_slug") or provenance.get("selection_rule") or "selection"
    source = provenance.get("source", "an unnamed source")
    at = provenance.get("source_revision") or provenance.get("fingerprint")
    summary = f"Select {rule} from {source}" + (f"@{at}" if at else "")
    if "rows_selected" in provenance:
        summary += f": {provenance['rows_selected']}" + (f" of {provenance['rows_in']}" if "rows_in" in provenance
                                                         else "") + " rows"
    description = "\n".join(f"{key}: {value}" for key, value in _ordered(provenance))
    return " ".join(summary.split()), description


def default_revision(provenance: Mapping[str, Any], now: datetime | None = None) -> str:
    """``select-<rule slug>`` (e.g. ``select-ifd-top5pct``), else ``select-<UTC timestamp>``."""
    slug = re.sub(r"[^a-z0-9._]+", "-", str(provenance.get("selection_rule_slug") or "").lower()).strip("-.")
    if not slug:
        slug = (now or datetime.now(timezone.utc)).strftime("%Y%m%d-%H%M%S")
    return f"select-{slug}"


# -- statistics -----------------------------------------------------------------------------------------------
def card_columns(ds: Dataset, requested: list[str] | None = None) -> list[str]:
    """The numeric score columns the card shows: ``requested``, else those of :data:`CARD_COLUMNS` in ``ds``."""
    names = requested if requested is not None else [c for c in CARD_COLUMNS if c in ds.column_names]
    for name in names:
        if name not in ds.column_names:
            raise ValueError(f"score column {name!r} is not in the dataset (columns: {ds.column_names})")
        if numeric_kind(ds.features[name]) is None:  # "null" counts: every value is missing
            raise ValueError(f"score column {name!r} is not numeric ({ds.features[name]}); "
                             "pass score_columns= with numeric columns only.")
    return list(names)


def score_stats(values: np.ndarray) -> dict[str, float]:
    """``count`` finite values, ``nan`` the others (NaN, null, ±inf), and min, quantiles, mean, max of the finite."""
    finite = values[np.isfinite(values)]
    stats = {"count": len(finite), "nan": len(values) - len(finite)}
    names = ["min", *(f"q{round(q * 100):02d}" for q in QUANTILES), "mean", "max"]
    if len(finite) == 0:
        return stats | dict.fromkeys(names, math.nan)
    numbers = [finite.min(), *np.quantile(finite, QUANTILES), finite.mean(), finite.max()]
    return stats | {name: float(v) for name, v in zip(names, numbers)}


def _positions_in_scored(scored: Dataset | None, selected: Dataset) -> list[int] | None:
    """Where each selected row sits in ``scored``, by ``row_id``; None when the datasets cannot be matched so."""
    if scored is None or ROW_ID not in scored.column_names or ROW_ID not in selected.column_names:
        return None
    position = require_unique_row_ids(scored[ROW_ID], where="the scored dataset: ",
                                      fix="make it unique to match the selected rows")
    missing = [r for r in selected[ROW_ID] if r not in position]
    if missing:
        raise ValueError(f"{len(missing)} selected {ROW_ID}(s) are not in the scored dataset, e.g. {missing[:5]}; "
                         "pass the scored dataset the selection was made from.")
    return [position[r] for r in selected[ROW_ID]]


def _selected_values(scored: Dataset | None, selected: Dataset, positions: list[int] | None, name: str) -> np.ndarray:
    """The selected rows' scores: looked up in ``scored`` when matched by row_id, else the selection's own."""
    if positions is not None:
        return float_column(scored, name)[positions]
    if name not in selected.column_names:
        raise ValueError(f"the selected rows have no {name!r} column and no {ROW_ID} to look it up in the scored "
                         f"dataset; keep the score columns or {ROW_ID} in the selection.")
    return float_column(selected, name)


def _size_category(rows: int) -> str:
    return next((name for bound, name in SIZE_CATEGORIES if rows < bound), "n>1T")


# -- figures --------------------------------------------------------------------------------------------------
Populations = list[tuple[str, np.ndarray]]  # ("all rows" | "selected", values), drawn in this order
COLORS = {"all rows": "tab:blue", "selected": "tab:orange"}


def _histogram(name: str, populations: Populations, threshold: float | None, path: Path) -> Path:
    finite = [(label, values[np.isfinite(values)]) for label, values in populations]
    pooled = np.concatenate([values for _, values in finite])
    bins = np.histogram_bin_edges(pooled, bins=int(np.clip(np.sqrt(len(pooled)), 10, 60)))
    fig = new_figure(6, 3.6)
    ax = fig.subplots()
    for label, values in finite:
        ax.hist(values, bins=bins, color=COLORS[label], alpha=0.45 if label == "all rows" else 0.8,
                label=f"{label} ({len(values)})")
    if threshold is not None:
        ax.axvline(threshold, color="red", linestyle="--", linewidth=1, label=f"threshold {threshold:g}")
    ax.set(xlabel=name, ylabel="rows", title=f"{name}: " + " and ".join(label for label, _ in populations))
    ax.legend()
    fig.savefig(path, dpi=110)
    return path


def _ifd_violin(populations: Populations, threshold: float | None, path: Path) -> Path:
    fig, (ax,) = violin_figure([("IFD", populations)], 2 + 1.6 * len(populations), colors=COLORS)
    ax.axhline(1.0, color="grey", linewidth=0.8, label="IFD = 1 (instruction does not help)")
    if threshold is not None:
        ax.axhline(threshold, color="red", linestyle="--", linewidth=1, label=f"threshold {threshold:g}")
    ax.set(title="IFD distribution")
    ax.legend(fontsize="small")
    fig.savefig(path, dpi=110)
    return path


# -- the card -------------------------------------------------------------------------------------------------
def make_card(scored: Dataset | None, out_dir: str | Path, *, selected: Dataset | DatasetDict | None = None,
              provenance: Mapping[str, Any] | None = None, thresholds: Mapping[str, float] | None = None,
              license: str | None = None, score_columns: list[str] | None = None,
              sections: Sequence[tuple[str, str]] = (), columns: list[str] | None = None) -> DatasetCard:
    """The card of ``selected`` chosen from ``scored``; figures go to ``out_dir/figures`` and are linked relatively.

    Either dataset may be None: ``selected=None`` describes a scored dataset, ``scored=None`` the selected
    rows alone. ``thresholds`` (column -> value) are marked on the figures. ``license`` defaults to
    ``provenance["license"]``; ``score_columns`` overrides the score columns shown (``columns`` is its old name).
    ``sections`` are more ``(title, Markdown)`` sections, e.g. the evidence of a fine-tuning comparison. Only the PNGs
    are written.
    """
    if scored is None and selected is None:
        raise ValueError("make_card needs the scored dataset, the selected rows, or both")
    facts = complete_provenance(provenance, selected, scored if selected is not None else None)
    chosen = None
    if selected is not None:
        splits = list(as_dataset_dict(selected).values())
        chosen = splits[0] if len(splits) == 1 else concatenate_datasets(splits)
    score_columns = renamed_keyword("score_columns", score_columns, "columns", columns)
    names = card_columns(scored if scored is not None else chosen, score_columns)
    thresholds = dict(thresholds or {})
    unknown = [c for c in thresholds if c not in names]
    if unknown:
        raise ValueError(f"thresholds given for {unknown}, which are not score columns {names}")
    positions = _positions_in_scored(scored, chosen) if chosen is not None else None
    figures_dir = Path(out_dir) / FIGURES_DIR
    figures_dir.mkdir(parents=True, exist_ok=True)

    table, images = [], []
    for name in names:
        populations = [("all rows", float_column(scored, name))] if scored is not None else []
        if chosen is not None:
            populations.append(("selected", _selected_values(scored, chosen, positions, name)))
        for label, values in populations:
            stats = score_stats(values)
            table.append([name, label, stats["count"], stats["nan"]]
                         + [format_number(v, ".6g") for v in list(stats.values())[2:]])
        if not any(np.isfinite(values).any() for _, values in populations):
            continue  # nothing to draw; the table shows the NaN count
        path = _histogram(name, populations, thresholds.get(name), figures_dir / f"{name}_histogram.png")
        images.append(f"![{name}: histogram]({FIGURES_DIR}/{path.name})")
        if name == "ifd":
            path = _ifd_violin(populations, thresholds.get(name), figures_dir / "ifd_violin.png")
            images.append(f"![IFD violin plot]({FIGURES_DIR}/{path.name})")

    rows = len(chosen) if chosen is not None else len(scored)
    data = DatasetCardData(license=license or facts.get("license"), size_categories=[_size_category(rows)],
                           task_categories=["text-generation"], tags=["hf-prospector", "data-selection"])
    source = facts.get("source", "a scored dataset")
    rule = f" by `{facts['selection_rule']}`" if facts.get("selection_rule") else ""
    intro = (f"{rows} rows selected from `{source}`{rule} with hf-prospector." if chosen is not None else
             f"Scores of {rows} rows of `{source}`, computed with hf-prospector.")
    parts = [SECTION_START, "# Data selected with hf-prospector" if chosen is not None else "# hf-prospector scores",
             intro, "## Provenance", markdown_table(["fact", "value"], [[k, v] for k, v in _ordered(facts)])]
    if names:
        parts += ["## Scores",
                  "`count` is the number of finite values, `NaN` the rows without one (NaN, null or infinite); "
                  "the other statistics are over the finite values. \"all rows\" are the scored rows the "
                  "selection was made from.",
                  markdown_table(STAT_HEADER, table), *images]
    parts += _length_section(scored, chosen, positions, names)
    parts += _checks(scored if scored is not None else chosen, facts)
    for title, text in sections:
        parts += [f"## {title}", text.strip()]
    parts.append(SECTION_END)
    return DatasetCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n\n".join(parts) + "\n")


def _length_section(scored: Dataset | None, chosen: Dataset | None, positions: list[int] | None,
                    names: list[str]) -> list[str]:
    """Response and instruction lengths of all vs selected rows, and each score's Spearman ρ with response length
    (IFD favours long responses); nothing for rows with no text to measure (a table of scores alone)."""
    from hf_prospector.selection.lengths import length_profile, rows_measurable

    pool = scored if scored is not None else chosen
    picked = scored.select(positions) if positions is not None else chosen if scored is not None else None
    if not rows_measurable(pool) or (picked is not None and not rows_measurable(picked)):
        return []
    profile = length_profile(pool, picked, columns=names, pool_label="all rows" if scored is not None else "selected")
    return ["## Length", profile.to_markdown()]


def _checks(ds: Dataset, facts: Provenance) -> list[str]:
    """The card's "Checks" section: the share of rows with IFD >= 1 (a template that does not fit the model when
    most are) and the rows' languages against the model's (see :mod:`hf_prospector.diagnostics`)."""
    from hf_prospector.diagnostics import language_mix, template_fit

    fit = template_fit(ds, template=facts.get("template"), model=facts.get("model"), warn=False)
    languages = language_mix(ds, model=facts.get("model"))
    lines = [f"- {fit.describe()}" if fit is not None else "", f"- {languages.describe()}" if languages else ""]
    lines = [line for line in lines if line]
    return ["## Checks", "\n".join(lines)] if lines else []


def merge_card(existing: DatasetCard, ours: DatasetCard) -> DatasetCard:
    """``existing`` (e.g. the card ``push_to_hub`` wrote) with our metadata and section added or replaced.

    Existing metadata wins (configs, dataset_info, the source's license), except ``size_categories``,
    which describes the published rows; tags and task categories are merged. Our section goes first;
    a section from an earlier publish is removed.
    """
    data = existing.data.to_dict()
    for key, value in ours.data.to_dict().items():
        if key in ("tags", "task_categories"):
            data[key] = list(dict.fromkeys([*_as_list(data.get(key)), *value]))
        elif key == "size_categories" or data.get(key) is None:
            data[key] = value
    old_body = re.sub(re.escape(SECTION_START) + r".*?" + re.escape(SECTION_END) + r"\n*", "", existing.text,
                      flags=re.S).strip()
    new_body = ours.text.strip() + ("\n\n" + old_body if old_body else "") + "\n"
    return DatasetCard(f"---\n{DatasetCardData(**data).to_yaml()}\n---\n\n{new_body}")


def _as_list(value) -> list:
    return [] if value is None else list(value) if isinstance(value, (list, tuple)) else [value]


def write_card(scored: Dataset | None, out_dir: str | Path, *, selected: Dataset | DatasetDict | None = None,
               provenance: Mapping[str, Any] | None = None, thresholds: Mapping[str, float] | None = None,
               license: str | None = None, score_columns: list[str] | None = None,
               sections: Sequence[tuple[str, str]] = (), columns: list[str] | None = None) -> Path:
    """The ``card`` command without publishing: ``out_dir/README.md`` and ``out_dir/figures/*.png``."""
    card = make_card(scored, out_dir, selected=selected, provenance=provenance, thresholds=thresholds, license=license,
                     score_columns=score_columns, sections=sections, columns=columns)
    path = Path(out_dir) / "README.md"
    card.save(path)
    return path


__getattr__, __dir__ = lazy_attributes(__name__, renamed={"SCORE_COLUMNS": "CARD_COLUMNS",
                                                         "score_columns": "card_columns"})
