"""Benchmark: int8 dynamic quantization of chosen linear layers, against float32: IFD's Spearman and the time.

Quantization counts only if IFD keeps Spearman >= 0.995 against float32 on 1,000 real rows. Each ``--layers``
choice quantizes those linear layers of every decoder layer (int8 weights per output channel, activations per
call: ``torch.ao.quantization.quantize_dynamic``) and scores the same rows eagerly in one call, as float32 does
first (quantized modules do not compile).

    python bench/bench_quantization.py                          # 1,000 rows: the MLP, its down projection
    python bench/bench_quantization.py --rows 300 --layers mlp.gate_proj+mlp.up_proj
"""

from __future__ import annotations

import time

import harness


def quantized(scorer, names: list[str]):
    """``scorer``'s model with ``names`` (e.g. ``mlp.down_proj``) of every decoder layer quantized in place."""
    import torch
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    for layer in scorer.engine().compiler.decoder_layers():
        for name in names:
            parent, _, child = name.rpartition(".")
            owner = layer.get_submodule(parent) if parent else layer
            linear = torch.nn.Sequential(getattr(owner, child))  # quantize_dynamic swaps children, not the root
            setattr(owner, child, quantize_dynamic(linear, {torch.nn.Linear: per_channel_dynamic_qconfig},
                                                   dtype=torch.qint8)[0])
    return scorer


def main() -> None:
    p = harness.parser(__doc__)
    p.add_argument("--rows", type=int, default=1000)
    p.add_argument("--layers", nargs="+", default=["mlp.gate_proj+mlp.up_proj+mlp.down_proj", "mlp.down_proj"],
                   help="each a '+'-joined list of linear layers within a decoder layer")
    args = p.parse_args()
    harness.print_header(f"int8 dynamic quantization vs float32, IFD on the first {args.rows} Alpaca rows", args)
    import numpy as np
    from scipy.stats import spearmanr

    from hf_prospector import IFDScorer

    harness.report_load("start")
    batch = harness.first_rows("alpaca_52k.json", args.rows)[:]
    warm = {k: v[:8] for k, v in batch.items()}

    def score(scorer) -> tuple[np.ndarray, float]:
        scorer(warm)
        start = time.perf_counter()
        ifd = np.array(scorer(batch)["ifd"], dtype=float)
        return ifd, time.perf_counter() - start

    reference, reference_seconds = score(IFDScorer(dtype="float32", compile=False))
    rows = [["float32 (eager)", f"{reference_seconds:.1f}", "", ""]]
    for choice in args.layers:
        ifd, seconds = score(quantized(IFDScorer(dtype="float32", compile=False), choice.split("+")))
        both = ~np.isnan(reference) & ~np.isnan(ifd)
        rho = spearmanr(reference[both], ifd[both]).statistic
        rows.append([f"int8: {choice}", f"{seconds:.1f}", f"{reference_seconds / seconds:.2f}x", f"{rho:.4f}"])
    table = harness.print_table(["linear layers quantized", "seconds", "speed vs float32", "IFD Spearman"], rows)
    print("# target: Spearman >= 0.995 over 1,000 rows")
    harness.report_end_load()
    harness.save_results("bench_quantization", {"table": table})


if __name__ == "__main__":
    main()
