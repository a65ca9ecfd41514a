"""Evidence: does a selection train a better model than random or longest rows? Fine-tune arms and compare.

>>> from hf_prospector.evaluation import run_evidence, TrainSettings
>>> result = run_evidence({"ifd-top5pct": top, "random-s0": r0, "random-s1": r1, "longest": long},
...                       eval_set, "evidence/", base_model="smollm2-135m", rows=500,
...                       settings=TrainSettings(epochs=2, learning_rate=1e-4))

Needs ``pip install 'hf_prospector[evidence]'`` (TRL; peft for LoRA).
"""

from .compare import bootstrap_interval, comparisons, write_report
from .data import Encoding, as_train_dataset, encode_set, training_rows
from .run import run_evidence
from .scoring import eval_losses
from .training import TrainSettings, fine_tune, make_trainer

__all__ = ["Encoding", "TrainSettings", "as_train_dataset", "bootstrap_interval", "comparisons", "encode_set",
           "eval_losses", "fine_tune", "make_trainer", "run_evidence", "training_rows", "write_report"]
