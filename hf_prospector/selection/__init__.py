"""Selection: turn score columns into the subset a user trains on.

>>> from hf_prospector.selection import select, select_superfiltering_d, superfiltering
>>> top, report = select(ds, superfiltering(0.05))              # top 5% by IFD among IFD < 1
>>> diverse, report = select_superfiltering_d(ds, k=0.02)      # top 20% by IFD, then facility location to 2%

Names load on first use: a recipe names a :class:`SelectionRule` without importing datasets or scikit-learn.
"""

from .._lazy import lazy_attributes

_RULES = ["IFD_RATIO_COLUMNS", "ORDERS", "SelectionReport", "SelectionRule", "cherry", "fraction_count", "nuggets",
          "select", "superfiltering"]
_BASELINES = ["length_matched_random", "longest", "random_rows"]
_LENGTHS = ["LengthProfile", "length_profile"]
_DIVERSITY = ["DENSE_MAX_ROWS", "DEFAULT_NEIGHBORS", "FacilityLocation", "select_diverse", "select_superfiltering_d"]

__all__ = _RULES + _BASELINES + _LENGTHS + _DIVERSITY
__getattr__, __dir__ = lazy_attributes(__name__, {**dict.fromkeys(_RULES, ".rules"),
                                                  **dict.fromkeys(_BASELINES, ".baselines"),
                                                  **dict.fromkeys(_LENGTHS, ".lengths"),
                                                  **dict.fromkeys(_DIVERSITY + ["superfiltering_d"], ".diversity")},
                                       renamed={"IFD_COLUMNS": "IFD_RATIO_COLUMNS"})
