"""hf_prospector: find the instruction-tuning rows worth training on, with a small language model.

>>> from hf_prospector import IFDScorer, load_rows, select, superfiltering, publish_local
>>> scored = IFDScorer(model="gpt2").score(load_rows("tatsu-lab/alpaca"))
>>> top, report = select(scored, superfiltering(0.05))
>>> publish_local(top, "out/repo", scored=scored)

Every name here loads its module on first use, so ``import hf_prospector`` imports neither torch nor
datasets; the modules (``hf_prospector.scorers``, ``.selection``, ``.publishing``, ...) stay importable.
"""

from ._lazy import lazy_attributes

__version__ = "0.2.0"

_EXPORTS = {
    ".scorers": ["Scorer", "IFDScorer", "GoldScorer"],
    ".formats": ["ColumnMapping"],
    ".sources": ["load_rows", "save_rows"],
    ".models": ["load_causal_lm", "load_encoder"],
    ".tasksets": ["load_task_set", "refine_task_set"],
    ".embeddings": ["embed_column"],
    ".runner": ["score_run"],
    ".ray_runner": ["score_run_ray"],
    ".selection": ["SelectionRule", "SelectionReport", "select", "superfiltering", "cherry", "nuggets",
                   "FacilityLocation", "select_diverse", "select_superfiltering_d", "random_rows", "longest",
                   "length_matched_random"],
    ".publishing": ["Publication", "publish", "publish_local", "make_card", "write_card"],
    ".reports": ["compare", "assess"],
    ".diagnostics": ["template_fit", "language_mix", "TemplateMismatchWarning"],
    ".recipes": ["Recipe", "load_recipe"],
    ".pipeline": ["RunResult", "run_recipe"],
    ".evaluation": ["run_evidence", "TrainSettings"],
}

__all__ = ["__version__"] + [name for names in _EXPORTS.values() for name in names]
__getattr__, __dir__ = lazy_attributes(__name__, {name: module for module, names in _EXPORTS.items() for name in names})
del lazy_attributes  # keeps dir(hf_prospector) to the API
