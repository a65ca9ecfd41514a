"""Benchmark: the output projection and its log-softmax at the targets, whole (``hidden @ weight^T``, then a
log-softmax over the [positions x vocabulary] logits: the baseline) against
:class:`~hf_prospector.engine.BlockedProjection` (a block of the vocabulary at a time), on the embedded model's head.

Both run :func:`~hf_prospector.engine.target_logprobs` on the same random hidden states, eager and compiled, for
each ``--chunks`` size (positions projected at once) and ``--blocks`` size (vocabulary rows at a time),
alternating in one process; each reports its median round as GFLOP/s and its share of a 2048^3 matmul in the
same dtype, measured between rounds.

    python bench/bench_head.py                       # float32, chunks 128,256,512, blocks 1024,2048,4096
    python bench/bench_head.py --dtype bfloat16 --chunks 256 --blocks 2048
"""

from __future__ import annotations

import statistics

import harness


def rate(fn, flops: float, seconds: float) -> float:
    """GFLOP/s of ``fn`` (``flops`` each call), called once to warm up, then for at least ``seconds``."""
    fn()
    calls, taken = harness.repeat_for(fn, seconds)
    return flops * calls / taken / 1e9


def main() -> None:
    p = harness.parser(__doc__)
    p.add_argument("--dtype", default="float32")
    p.add_argument("--chunks", default="128,256,512", help="comma-separated positions projected at once")
    p.add_argument("--blocks", default="1024,2048,4096", help="comma-separated vocabulary rows at a time")
    p.add_argument("--modes", default="eager,compiled")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seconds", type=float, default=1.5, help="time per measurement")
    args = p.parse_args()
    harness.print_header(f"output projection + log-softmax at the targets, {args.dtype}: whole vs vocabulary blocks",
                         args)
    import torch

    from hf_prospector.engine import BlockedProjection, resolve_dtype, target_logprobs
    from hf_prospector.models import load_causal_lm

    harness.report_load("start")
    dtype = resolve_dtype(args.dtype, torch.device("cpu"))
    model, _ = load_causal_lm()
    head = model.get_output_embeddings().to(dtype)
    vocab, hidden_size = head.weight.shape
    heads = {"whole": head, **{f"blocks of {b}": BlockedProjection(head, int(b)) for b in args.blocks.split(",")}}
    functions = {"eager": target_logprobs, "compiled": torch.compile(target_logprobs, dynamic=True)}
    rows = []
    with torch.inference_mode():
        for chunk in (int(c) for c in args.chunks.split(",")):
            hidden = torch.randn(chunk, hidden_size, dtype=dtype)
            targets = torch.randint(0, vocab, (chunk,))
            flops = 2.0 * chunk * hidden_size * vocab
            for mode in args.modes.split(","):
                fn = functions[mode]
                expected = fn(head, hidden, targets, None)
                for h in heads.values():
                    torch.testing.assert_close(fn(h, hidden, targets, None), expected, atol=1e-3, rtol=1e-3)
                rates: dict[str, list[float]] = {name: [] for name in heads}
                peaks = []
                for r in range(args.rounds):
                    for name in heads if r % 2 == 0 else list(heads)[::-1]:
                        rates[name].append(rate(lambda h=heads[name]: fn(h, hidden, targets, None), flops, args.seconds))
                    done, seconds = harness.matmul_sample(dtype, args.seconds / 2)
                    peaks.append(done / seconds / 1e9)
                peak = statistics.median(peaks)
                base = statistics.median(rates["whole"])
                for name, measured in rates.items():
                    value = statistics.median(measured)
                    rows.append([chunk, mode, name, f"{value:.0f}", f"{value / peak:.0%}", f"{peak:.0f}",
                                 "" if name == "whole" else f"**{value / base:.2f}x**"])
    table = harness.print_table(["positions", "mode", "projection", "GFLOP/s", "of matmul", "2048^3 matmul GFLOP/s",
                                 "vs whole"], rows)
    harness.report_end_load()
    harness.save_results("bench_head", {"dtype": args.dtype, "table": table})


if __name__ == "__main__":
    main()
