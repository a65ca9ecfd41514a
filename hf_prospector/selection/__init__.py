"""Selection: turn score columns into the subset a user trains on.

>>> from hf_prospector.selection import select, superfiltering, superfiltering_d
>>> top, report = select(ds, superfiltering(0.05))          # top 5% by IFD among IFD < 1
>>> diverse, report = superfiltering_d(ds, k=0.02)          # top 20% by IFD, then facility location to 2%
"""

from .baselines import length_matched_random, longest, random_rows
from .diversity import DENSE_MAX_ROWS, DEFAULT_NEIGHBORS, FacilityLocation, select_diverse, superfiltering_d
from .rules import (IFD_COLUMNS, SelectionReport, SelectionRule, cherry, fraction_count, nuggets, select,
                    superfiltering)

__all__ = ["DENSE_MAX_ROWS", "DEFAULT_NEIGHBORS", "IFD_COLUMNS", "FacilityLocation", "SelectionReport",
           "SelectionRule", "cherry", "fraction_count", "nuggets", "select", "select_diverse", "superfiltering",
           "superfiltering_d", "length_matched_random", "longest", "random_rows"]
