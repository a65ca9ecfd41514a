"""``torch.compile`` for long runs only: short runs never pay the compile time, and a machine whose compiler
fails still scores, eagerly."""

from __future__ import annotations

import os
import warnings

import torch

from .prefix_cache import SharedPrefixCache
from .projection import target_logprobs

# Seconds of eager model time after which ``compile="auto"`` compiles: a run that long is worth the compile
# (tens of seconds on a CPU, cached on disk by torch for later runs). bench: python bench/bench_ifd.py
COMPILE_AFTER_S = 60.0

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
    once for ``compile=True``, once :meth:`add_eager_time` has counted ``COMPILE_AFTER_S`` seconds for ``"auto"``,
    never for ``False``. A compiler error undoes it, with a warning, and the model runs eagerly for good.

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

    def add_eager_time(self, seconds: float) -> None:
        """Count eager model time; ``"auto"`` compiles once it passes ``COMPILE_AFTER_S``. On a GPU this is the
        host's time (the device runs behind it)."""
        if self.compiled or self.failed or self.setting != "auto":
            return
        self.eager_seconds += seconds
        if self.eager_seconds >= COMPILE_AFTER_S:
            self.compile()
