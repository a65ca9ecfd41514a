"""Benchmark: IFD over every row of Alpaca (52k) on one GPU with a GPT-2-size model, the Superfiltering setting.

Superfiltering scores Alpaca's 52k rows with GPT-2 small and reports about 8 minutes. This script times
``ds.map(IFDScorer(model=...), batched=True, batch_size=...)`` over the rows of ``alpaca_52k.json`` as a
user runs it: once cold (the process's first scoring, its kernels never run before; the model load and CUDA
set-up just before it are timed on their own) and then warm for each ``--batch-sizes`` (a fresh scorer whose
model is already on the device). The model is GPT-2 small (124M) built from its config with random weights:
the speed does not depend on the weights, and no model hub is needed. The tokenizer is the embedded
SmolLM2's, a 49k-entry byte-level BPE like GPT-2's 50k (GPT-2's own needs the hub), so the rows have about
GPT-2's token counts. ``HF_PROSPECTOR_SHARED_DATA`` names the data folder on a machine without ``../shared``.

In the same session, the Superfiltering script's loop (bench/reference.py: one row per forward pass,
float32, full logits) scores the first ``--reference-rows`` rows with the same weights on the same device;
its time per row, times the rows, gives the loop's time for the whole set and so the speed ratio. On those
rows agreement is checked: ``convention="superfiltering", dtype="float32"`` against the loop (max |diff| of
both losses), and the defaults against float32. With random weights every loss sits near log(vocabulary),
so these differences test the arithmetic; rankings come from bench_ifd.py with the real model.

Columns: seconds; rows/s; tokens/s (real tokens through the model, padding excluded); TFLOP/s (the issue's
count, see bench/harness.py, padding included); peak GPU memory allocated by torch.

    python bench/bench_gpu.py                                              # every row, on cuda
    python bench/bench_gpu.py --rows 300 --reference-rows 20 --device cpu  # a smoke run without a GPU
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np

import harness
from bench_ifd import agreement, score
from reference import superfiltering_losses

TARGET_SECONDS = 60.0


def gpt2_folder(tokenizer, folder: Path) -> str:
    """GPT-2 small's config with random weights, saved with ``tokenizer`` (its ids fit GPT-2's vocabulary)."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(vocab_size=max(50257, len(tokenizer)), bos_token_id=tokenizer.bos_token_id,
                        eos_token_id=tokenizer.eos_token_id)
    GPT2LMHeadModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def gpu_peak_mb(device) -> float:
    import torch

    return torch.cuda.max_memory_allocated(device) / 2 ** 20 if device.type == "cuda" else float("nan")


def reset_gpu_peak(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def main() -> None:
    parser = harness.parser(__doc__)
    parser.add_argument("--rows", type=int, default=None, help="first rows of the data file (default: all)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1000, 10000],
                        help="ds.map batch sizes of the warm passes; the cold pass uses the first")
    parser.add_argument("--reference-rows", type=int, default=1000, help="rows the per-row loop scores")
    parser.add_argument("--device", default="cuda", help="the device of both sides")
    parser.add_argument("--tokenizer", default=None, help="a tokenizer folder (default: the embedded SmolLM2's)")
    parser.add_argument("--data", default="alpaca_52k.json", help="a json file in the shared data folder")
    args = parser.parse_args()

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from hf_prospector.encoders import make_encoder
    from hf_prospector.formats import batch_to_examples
    from hf_prospector.models import load_causal_lm
    from hf_prospector.scorers import IFDScorer

    device = torch.device(args.device)
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "no GPU"
    harness.print_header(f"IFD on one {args.device} device ({gpu}): GPT-2 small (random weights), {args.data}", args)
    ds = harness.first_rows(args.data, args.rows or 10 ** 9)
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer) if args.tokenizer else load_causal_lm(None)[1]
    folder = gpt2_folder(tokenizer, Path(tempfile.mkdtemp(prefix="bench_gpu_")))

    def timed(scorer, batch_size: int, counter=None):
        reset_gpu_peak(device)
        start = time.perf_counter()
        out = score(scorer, ds, batch_size)
        seconds = time.perf_counter() - start
        tokens = counter.real_tokens if counter else float("nan")
        flops = counter.flops if counter else float("nan")
        return out, [f"{seconds:.1f}", f"{len(ds) / seconds:.0f}", f"{tokens / seconds:.0f}",
                     f"{flops / seconds / 1e12:.1f}", f"{gpu_peak_mb(device):.0f}"], seconds

    rows, results = [], {}
    cold_scorer = IFDScorer(model=folder, device=args.device)
    start = time.perf_counter()
    engine = cold_scorer.engine()  # what the map's first batch would do: load, move to the device, check the head
    results["cold_load_seconds"] = load = time.perf_counter() - start
    _, cells, results["cold_seconds"] = timed(cold_scorer, args.batch_sizes[0])
    compiled = ", compiled during the pass" if engine.compiled else ""
    rows.append([f"IFDScorer() cold, batch_size={args.batch_sizes[0]} (a fresh process's first run{compiled}; "
                 f"model load and CUDA set-up before it: {load:.1f} s)"] + cells)
    dtype = harness.dtype_name(engine.dtype)
    del cold_scorer, engine
    for batch_size in args.batch_sizes:
        scorer = IFDScorer(model=folder, device=args.device)
        counter = harness.FlopCounter(scorer.engine().model, scorer.engine().head)
        _, cells, results[f"warm_seconds_batch_{batch_size}"] = timed(scorer, batch_size, counter)
        compiled = ", compiled during the pass" if scorer.engine().compiled else ""
        rows.append([f"IFDScorer() warm, batch_size={batch_size} ({dtype}{compiled})"] + cells)
        counter.remove()
        del scorer, counter

    examples = batch_to_examples(ds[:], turn="last")
    encoder_scorer = IFDScorer(model=folder)
    start = time.perf_counter()
    make_encoder("ifd", encoder_scorer.convention, tokenizer, template=encoder_scorer.template,
                 max_length=encoder_scorer.max_length,
                 min_response_tokens=encoder_scorer.min_response_tokens).encode_many(examples)
    encode_seconds = time.perf_counter() - start
    rows.append(["tokenization alone (both passes of every row, one encode_many call)", f"{encode_seconds:.1f}",
                 "", "", "", ""])

    # The paper's loop on the first rows, same weights and device, float32.
    sample = ds.select(range(min(args.reference_rows, len(ds))))
    sample_rows = sample.to_list()
    reference_model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).to(device).eval()
    superfiltering_losses(reference_model, tokenizer, sample_rows[:2])  # CUDA kernels chosen before timing
    start = time.perf_counter()
    reference = superfiltering_losses(reference_model, tokenizer, sample_rows)
    per_row = (time.perf_counter() - start) / len(sample_rows)
    loop_seconds = per_row * len(ds)
    best = min(v for k, v in results.items() if k.startswith("warm"))
    rows.append([f"Superfiltering loop (float32, 1 row per pass), {len(sample_rows)} rows timed, "
                 f"x{len(ds) / len(sample_rows):.0f}", f"{loop_seconds:.1f}", f"{1 / per_row:.0f}", "", "", ""])
    rows.append(["speed ratio, best warm pass against the loop", f"{loop_seconds / best:.1f}x", "", "", "", ""])
    results.update(loop_seconds_per_row=per_row, loop_seconds_estimated=loop_seconds, encode_seconds=encode_seconds)

    ref_cond = np.array([r["loss_cond"] for r in reference])
    ref_ifd = np.exp(ref_cond - np.array([r["loss_uncond"] for r in reference]))
    default_sample = score(IFDScorer(model=folder, device=args.device), sample, args.batch_sizes[0])
    table = []
    for name, scorer, other, other_loss in [
        ('IFDScorer(convention="superfiltering", dtype="float32") vs loop',
         IFDScorer(model=folder, device=args.device, convention="superfiltering", dtype="float32"), ref_ifd, ref_cond),
        ('IFDScorer() vs IFDScorer(dtype="float32")', IFDScorer(model=folder, device=args.device, dtype="float32"),
         np.array(default_sample["ifd"], dtype=float), np.array(default_sample["loss_cond"], dtype=float)),
    ]:
        out = score(scorer, sample, args.batch_sizes[0])
        table.append(agreement(name, np.array(out["ifd"], dtype=float), other,
                               np.array(out["loss_cond"], dtype=float), other_loss))

    print()
    speed_text = harness.print_table(["run", "seconds", "rows/s", "tokens/s", "TFLOP/s", "peak GPU MB"], rows)
    print()
    agreement_text = harness.print_table(["agreement (ifd)", "rows", "NaN in one only", "Spearman", "max |diff|",
                                          "max |diff| loss_cond"], table)
    print(f"# target: every row of the set in under {TARGET_SECONDS:g} s on one H100/H200 "
          f"(best warm pass: {best:.1f} s, cold: {results['cold_seconds']:.1f} s after a "
          f"{results['cold_load_seconds']:.1f} s load, {len(ds)} rows)")
    harness.save_results("bench_gpu", {"rows": len(ds), "device": gpu, "results": results, "agreement": table,
                                       "tables": [speed_text, agreement_text]})


if __name__ == "__main__":
    main()
