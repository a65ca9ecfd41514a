"""Evidence: does a selection train a better model than random or longest rows? Fine-tune arms and compare.

>>> from hf_prospector.evaluation import run_evidence, TrainSettings
>>> result = run_evidence({"ifd-top5pct": top, "random-s0": r0, "random-s1": r1, "longest": long},
...                       eval_set, "evidence/", base_model="smollm2-135m", rows=500,
...                       settings=TrainSettings(epochs=2, learning_rate=1e-4))

Needs ``pip install 'hf_prospector[evidence]'`` (TRL; peft for LoRA). Names load on first use, so a recipe names
:class:`TrainSettings` without importing torch or datasets.
"""

from .._lazy import lazy_attributes

_EXPORTS = {".compare": ["bootstrap_interval", "comparisons", "write_report"],
            ".data": ["Encoding", "as_train_dataset", "encode_set", "training_rows"],
            ".generation": ["GenerationMetrics", "generate_answers"],
            ".run": ["run_evidence"], ".scoring": ["eval_losses"],
            ".training": ["TrainSettings", "fine_tune", "make_trainer"]}

__all__ = sorted(name for names in _EXPORTS.values() for name in names)
__getattr__, __dir__ = lazy_attributes(__name__, {name: module for module, names in _EXPORTS.items() for name in names})
