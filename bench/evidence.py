"""Evidence bench: does an IFD selection fine-tune a better model than random, longest or length-matched rows?

Scores a pool of Alpaca rows (``alpaca_52k.json``) with IFD (exact and ``superfiltering`` conventions), picks arms of
equal size (IFD top rows under each convention, random with several seeds, longest responses, random rows
length-matched to the exact-IFD arm), fine-tunes the base model on each with identical settings and compares their
eval loss on held-out GPT-4 answers (``alpaca_gpt4_9k.json``, rows whose instruction is in no arm) and on
``alpaca_eval_805.json`` with paired bootstrap intervals (``hf_prospector.evaluation.run_evidence``). The embedded SmolLM2-135M is scorer and base.

    python bench/evidence.py --small          # minutes: a smoke run of the whole path, numbers mean little
    python bench/evidence.py                  # about 40 minutes on 2 AMX cores (bfloat16), longer in float32
    python bench/evidence.py --pool 52002 --arm-rows 2600 --eval-rows 1000 --epochs 3   # on a GPU

Results go to ``bench/results/evidence[-small]/`` (report.md, evidence.json, evidence.png; arms resume).
``--small`` scores and evaluates without ``torch.compile`` (its compile time would dominate a run of minutes).
"""

from __future__ import annotations

import os
import time

from harness import RESULTS, first_rows, parser, print_header, report_end_load, report_load

SIZES = {  # pool rows scored, rows per arm, eval rows, random seeds, optimizer steps (None: one epoch)
    "small": dict(pool=200, arm_rows=16, eval_rows=16, seeds=2, steps=2),
    # About 40 minutes on 2 AMX cores in bfloat16 (1,766 s with the pool's scores cached, and about 11 minutes
    # of scoring); float32-only CPUs take several times longer.
    "full": dict(pool=3000, arm_rows=150, eval_rows=200, seeds=3, steps=None),
}


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--small", action="store_true", help="a run of minutes (smoke test of the whole path)")
    p.add_argument("--pool", type=int, help="Alpaca rows scored and selected from")
    p.add_argument("--arm-rows", type=int, help="rows per arm (every arm the same)")
    p.add_argument("--eval-rows", type=int, help="held-out GPT-4 rows evaluated")
    p.add_argument("--seeds", type=int, help="random arms (seeds 0..n-1)")
    p.add_argument("--steps", type=int, help="optimizer steps per arm (default: --epochs)")
    p.add_argument("--epochs", type=float, default=1.0)
    p.add_argument("--learning-rate", type=float, default=5e-5)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--model", default="smollm2-135m", help="scorer and base model")
    p.add_argument("--dtype", default="auto",
                   help="scoring and evaluation dtype; bfloat16 also trains in bfloat16 autocast (float32 weights)")
    args = p.parse_args()
    size = SIZES["small" if args.small else "full"]
    for key in size:
        if getattr(args, key, None) is None:
            setattr(args, key, size[key])
    if args.small:
        os.environ.setdefault("HF_PROSPECTOR_COMPILE", "0")
    print_header("fine-tune arms chosen by IFD and by baselines, compare eval loss with 95% intervals", args)
    import torch

    from hf_prospector.engine import resolve_dtype
    from hf_prospector.evaluation import TrainSettings, run_evidence
    from hf_prospector.scorers import IFDScorer
    from hf_prospector.selection import SelectionRule, length_matched_random, longest, random_rows, select

    dtype = resolve_dtype(args.dtype, torch.device("cpu"))
    bf16 = dtype == torch.bfloat16
    print(f"# dtype: scoring/eval {dtype}, training {'bfloat16 autocast' if bf16 else 'float32'}; sizes: {vars(args)}")
    report_load("start")
    started = time.perf_counter()
    pool = first_rows("alpaca_52k.json", args.pool)
    print(f"# scoring {len(pool)} rows with IFD (exact and superfiltering conventions)", flush=True)
    exact = IFDScorer(args.model, dtype=args.dtype).score(pool)
    paper = IFDScorer(args.model, convention="superfiltering", dtype=args.dtype).score(pool)
    print(f"# scored {len(pool)} rows twice in {time.perf_counter() - started:.0f} s", flush=True)

    k = args.arm_rows
    arms = {"ifd-exact": select(exact, SelectionRule(top_n=k))[0],
            "ifd-superfiltering": select(paper, SelectionRule(top_n=k))[0],
            "longest": select(exact, longest(k))[0]}
    arms["length-matched"] = select(exact, length_matched_random(arms["ifd-exact"], seed=100))[0]
    for seed in range(args.seeds):
        arms[f"random-{seed}"] = select(exact, random_rows(k, seed=seed))[0]
    arms = {name: ds.select_columns(["instruction", "input", "output"]) for name, ds in arms.items()}

    trained = {(r["instruction"], r["input"]) for ds in arms.values() for r in ds}
    held_out = first_rows("alpaca_gpt4_9k.json", 10**6).filter(lambda r: (r["instruction"], r["input"]) not in trained)
    alpaca_eval = first_rows("alpaca_eval_805.json", 10**6).select_columns(["instruction", "output"])
    eval_sets = {"gpt4-held-out": held_out.shuffle(seed=0).select(range(min(args.eval_rows, len(held_out)))),
                 "alpaca-eval": alpaca_eval.shuffle(seed=0).select(range(min(args.eval_rows, len(alpaca_eval))))}

    settings = TrainSettings(epochs=args.epochs, steps=args.steps, learning_rate=args.learning_rate,
                             batch_size=args.batch_size, bf16=bf16)
    out = RESULTS / ("evidence-small" if args.small else "evidence")
    result = run_evidence(arms, eval_sets, out, base_model=args.model, settings=settings, dtype=args.dtype,
                          equal_size=False, rows=min(len(ds) for ds in arms.values()))
    print(open(result["files"]["markdown"]).read())
    print(f"# total {time.perf_counter() - started:.0f} s; report in {out}")
    report_end_load()


if __name__ == "__main__":
    main()
