"""``torch.compile`` for long runs only: short runs never pay a compile they cannot recoup, and a machine whose
compiler fails still scores, eagerly.

``compile="auto"`` weighs the compile's cost against the eager time it saves. The cost is what the last compile
of the same model took on this machine, recorded inside torch's on-disk kernel cache (``TORCHINDUCTOR_CACHE_DIR``),
whose kernels make a second run's compile short: when that cache is wiped, the record goes with it. Before any
record, the cost is ``COMPILE_AFTER_S``. Told how many rows are left (:meth:`DeferredCompiler.expect`), it
compiles as soon as they repay the cost and never when they cannot; not told, it compiles once the eager time
spent equals the cost (so a run never spends more than twice the better choice's time).
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path

import torch

from ..utils import atomic_write
from .prefix_cache import SharedPrefixCache
from .projection import target_logprobs

# A cold compile's seconds on a CPU, until this machine has measured its own. bench: python bench/bench_ifd.py
COMPILE_AFTER_S = 60.0
# The share of eager model time compiled code saves on a CPU (SmolLM2-135M, 1 - eager/compiled share of the matmul
# rate); other dtypes and devices: the smaller. bench: python bench/bench_utilisation.py --eager --threads 1
COMPILED_SAVING = {torch.float32: 0.12, torch.bfloat16: 0.23}

_COMPILE_WORDS = {"on": True, "1": True, "true": True, "off": False, "0": False, "false": False, "auto": "auto"}


def resolve_compile(compile: bool | str | None) -> bool | str:
    """``True``, ``False`` or ``"auto"``; also the words on / off / auto (the CLI's) and 1 / 0. ``None`` reads
    ``HF_PROSPECTOR_COMPILE`` (default auto)."""
    if compile is None:
        compile = os.environ.get("HF_PROSPECTOR_COMPILE", "auto")
    if isinstance(compile, str):
        compile = _COMPILE_WORDS.get(compile.lower(), compile)
    if compile not in (True, False, "auto"):
        raise ValueError(f"compile must be True, False or 'auto', got {compile!r}")
    return compile


class DeferredCompiler:
    """Compiles a model's decoder layers in place (``nn.Module.compile``), and the projection's log-softmax: at
    once for ``compile=True``, when it repays its cost for ``"auto"`` (see the module), never for ``False``. A
    compiler error undoes it, with a warning, and the model runs eagerly for good.

    Compiled, shapes are dynamic and one graph serves every layer (one more for passes over a shared prefix); it
    fuses the normalisation, rotary and activation arithmetic that otherwise dominates on a CPU.
    """

    def __init__(self, model, device: torch.device, compile: bool | str | None, cache_arg: str):
        self.model = model
        self.device = device
        self.setting = resolve_compile(compile)
        self.cache_arg = cache_arg  # the keyword a key/value cache is passed under
        self.compiled = False  # whether the decoder layers run compiled now
        self.failed: str | None = None  # the compiler's error, once it failed (then eager for good)
        self.eager_seconds = 0.0  # model time before compiling, which "auto" weighs against the compile
        self.eager_tokens = 0  # tokens run in that time
        self.eager_rows = 0  # rows scored in that time, as callers of expect count them
        self.worth_it: bool | None = None  # "auto": whether the rows left repay a compile (None: not told)
        self._timing_first = False  # the first compiled pass is timed: that is the compile's cost
        self._cost: float | None = None  # see cost()
        self.target_logprobs = target_logprobs  # compiled along with the layers
        self._attention = model.config._attn_implementation  # the model's own, restored if compiling fails
        if self.setting is True:
            self.compile()

    def decoder_layers(self) -> torch.nn.ModuleList | None:
        """The model's list of decoder layers (the backbone's child with one module per hidden layer)."""
        n = getattr(self.model.config, "num_hidden_layers", None)
        children = self.model.base_model.children()
        return next((m for m in children if isinstance(m, torch.nn.ModuleList) and len(m) == n), None)

    def compile(self) -> None:
        layers = self.decoder_layers()
        if layers is None:
            self.give_up(f"no list of decoder layers found in {type(self.model.base_model).__name__}")
            return
        for layer in layers:
            layer.compile(dynamic=True)
        self.target_logprobs = torch.compile(target_logprobs, dynamic=True)
        self.compiled = True
        self._timing_first = True
        if self.device.type == "cpu":
            # Compiled, the model's own attention arithmetic is as fast as CPU flash attention, which keeps a
            # generated kernel for every sequence length it meets (memory grows). bench: python bench/bench_scale.py
            self._set_attention("eager")

    def give_up(self, reason: str) -> None:
        """Back to eager for good: the model is left as it came."""
        for layer in self.decoder_layers() or ():
            layer._compiled_call_impl = None  # undoes nn.Module.compile
        self.target_logprobs = target_logprobs
        self._set_attention(self._attention)
        self.compiled = False
        self.failed = reason
        warnings.warn(f"torch.compile is not used ({reason}); scoring continues eagerly", stacklevel=3)

    def _set_attention(self, implementation: str) -> None:
        """Switch the model's attention implementation, where transformers can (models on its attention interface)."""
        setter = getattr(self.model, "set_attn_implementation", None)
        if setter is not None and implementation != self.model.config._attn_implementation:
            setter(implementation)

    def run(self, fn, *args, **kwargs):
        """``fn(*args, **kwargs)``, where ``fn`` may run compiled code. Passes over a :class:`SharedPrefixCache`
        run compiled with the layer number as a runtime integer; other passes that use a key/value cache run
        eagerly (its per-layer state would recompile every layer). A compiler error falls back to eager for good."""
        if not self.compiled:
            return fn(*args, **kwargs)
        shared = isinstance(kwargs.get(self.cache_arg), SharedPrefixCache)
        if kwargs.get("use_cache") and not shared:
            with torch.compiler.set_stance("force_eager"):
                return fn(*args, **kwargs)
        try:
            if shared:
                with torch._dynamo.config.patch(allow_unspec_int_on_nn_module=True):
                    return fn(*args, **kwargs)
            return fn(*args, **kwargs)
        except torch.cuda.OutOfMemoryError:
            raise
        except Exception as err:
            first_line = str(err).splitlines()[0] if str(err) else ""
            self.give_up(f"{type(err).__name__}: {first_line}")
            with torch.compiler.set_stance("force_eager"):
                return fn(*args, **kwargs)

    def record(self, seconds: float, tokens: int) -> None:
        """Count one pass of ``tokens`` tokens and its model time (on a GPU, the host's: the device runs behind it).
        Eager, it adds to the time ``"auto"`` weighs; the first compiled pass, less what it would have taken eagerly,
        is the compile's cost on this machine, kept for later runs."""
        if self._timing_first:
            self._timing_first = False
            eager_estimate = tokens * self.eager_seconds / self.eager_tokens if self.eager_tokens else 0.0
            if not self.failed:  # a compile that failed measured nothing
                self._save_cost(max(seconds - eager_estimate, 0.0))
        if self.compiled or self.failed or self.setting != "auto":
            return
        self.eager_seconds += seconds
        self.eager_tokens += tokens
        if self.worth_it is None and self.eager_seconds >= self.cost():
            self.compile()

    def expect(self, rows_scored: int, rows_left: int) -> None:
        """``"auto"``, told by a caller that knows the run's length, after ``rows_scored`` more rows: ``rows_left``
        remain. Compiles now if their eager time (at the rate measured so far) repays the compile; if it cannot,
        the run stays eager to its end."""
        if self.compiled or self.failed or self.setting != "auto" or rows_scored <= 0:
            return
        self.eager_rows += rows_scored
        left_seconds = self.eager_seconds / self.eager_rows * rows_left
        saving = COMPILED_SAVING.get(self.model.dtype, min(COMPILED_SAVING.values()))
        self.worth_it = left_seconds * saving > self.cost()
        if self.worth_it:
            self.compile()

    # -- the compile's cost on this machine, kept on disk -----------------------------------------
    def cost(self) -> float:
        """Seconds a compile of this model takes here: the last one measured, else ``COMPILE_AFTER_S`` (read once)."""
        if self._cost is None:
            self._cost = self._costs().get(self._cost_key(), COMPILE_AFTER_S)
        return self._cost

    def _cost_key(self) -> str:
        config = self.model.config.to_json_string(use_diff=False)
        return hashlib.sha256("|".join([torch.__version__, self.device.type, str(self.model.dtype),
                                        str(torch.get_num_threads()), config]).encode()).hexdigest()[:24]

    @staticmethod
    def _costs_path() -> Path:
        from torch._inductor.runtime.cache_dir_utils import cache_dir

        return Path(cache_dir()) / "hf_prospector_compile_seconds.json"

    def _costs(self) -> dict[str, float]:
        try:
            return json.loads(self._costs_path().read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}

    def _save_cost(self, seconds: float) -> None:
        costs = {**self._costs(), self._cost_key(): round(seconds, 2)}
        try:
            self._costs_path().parent.mkdir(parents=True, exist_ok=True)
            atomic_write(self._costs_path(), lambda tmp: tmp.write_text(json.dumps(costs), encoding="utf-8"))
        except OSError:  # a read-only cache: the next run estimates again
            pass
