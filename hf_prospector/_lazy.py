"""Module attributes resolved on first use (PEP 562), as ``transformers`` and ``datasets`` do.

A package lists the names it exports and the submodule each lives in, so ``import hf_prospector`` imports
neither torch nor datasets; an old name stays as an alias that warns and points to the new one.
"""

from __future__ import annotations

import importlib
import sys
import warnings
from typing import Any, Callable


def lazy_attributes(module_name: str, exports: dict[str, str] | None = None,
                    renamed: dict[str, str] | None = None) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for the module ``module_name``.

    ``exports`` maps a name to the submodule that defines it (relative, e.g. ``".scorers"``), imported on
    first access and then kept in the module; ``renamed`` maps an old name to its new name in the same
    module, returned with a ``DeprecationWarning``.
    """
    exports, renamed = exports or {}, renamed or {}
    module = sys.modules[module_name]

    def __getattr__(name: str) -> Any:
        if name in exports:
            value = getattr(importlib.import_module(exports[name], module_name), name)
            setattr(module, name, value)  # the next access is a plain attribute lookup
            return value
        if name in renamed:
            warnings.warn(f"{module_name}.{name} is now {renamed[name]}", DeprecationWarning, stacklevel=2)
            return getattr(module, renamed[name])
        raise AttributeError(f"module {module_name!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        return sorted(set(vars(module)) | set(exports))

    return __getattr__, __dir__
