"""The scoring engine: token log-probabilities at chosen positions of many sequences, fast.

Every scorer reduces to one request: "for each sequence, the log-probability of tokens
``ids[start:]`` given what precedes them". The engine

1. sorts the sequences by length (longest first) and packs them into micro-batches under a token
   budget (``batch rows x longest row <= token_budget``), right-padded with an attention mask;
2. runs the model's backbone once per micro-batch, then applies the output projection only at the
   scored positions (context tokens never pay for the vocabulary projection);
3. takes the log-softmax in float32, in chunks, and gathers the target tokens;
4. copies the results to the host once per call and restores the original order.

On CUDA the host thus queues micro-batches ahead of the device; attention leaves out cuDNN's kernels (they
plan anew for every shape) and an unaligned vocabulary such as GPT-2's is padded for the matrix units.

On CUDA an out-of-memory error halves the micro-batch and retries. ``prefixed_logprobs`` serves the
golden score: one prefix (a one-shot example) is encoded once and its key/value cache shared, read-only,
by every micro-batch of continuations (:class:`SharedPrefixCache`).

Long runs are compiled: once the engine has spent ``COMPILE_AFTER_S`` seconds running the model, its
decoder layers and the projection go through ``torch.compile`` (shapes dynamic, one graph shared by every
layer, one more for passes over a shared prefix), which fuses the normalisation, rotary and activation
arithmetic that otherwise dominates on a CPU. Short runs never pay the compile time; the prefix's own pass
and any compiler failure run eagerly.

Memory held between batches stays flat however many rows a run scores: compiled on a CPU, attention is the
model's own arithmetic (CPU flash attention keeps a generated kernel for every sequence length it meets),
oneDNN's cache of kernels per matrix shape is bounded, and scorers hand freed memory back to the OS after each
batch. The peak inside a batch is bounded too: the engine hands freed memory back whenever the process has grown
``FREED_MEMORY_SLACK`` since the last hand-back.
"""

from __future__ import annotations

import contextlib
import copy
import ctypes
import ctypes.util
import functools
import inspect
import os
import time
import warnings
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from transformers.cache_utils import Cache, DynamicLayer

try:
    from torch.nn.attention import SDPBackend, sdpa_kernel
except ImportError:  # torch < 2.3: no cuDNN attention to avoid
    sdpa_kernel = None

# Seconds of eager model time after which ``compile="auto"`` compiles: a run that long is worth the
# compile (tens of seconds on a CPU, cached on disk by torch for later runs).
COMPILE_AFTER_S = 60.0

# oneDNN (the CPU's matrix products) keeps one generated kernel per matrix shape it meets, about 0.6 MB each,
# up to 1,024 of them; micro-batches bring new shapes all through a long run, so that cache alone grew a process
# by ~600 MB over 8,000 rows. 256 still holds every kernel a micro-batch reuses (all its layers share shapes); the
# extra misses cost about 4 ms each, a second per 2,000 rows. oneDNN reads this when it first runs, hence on
# import; a value the user set wins.
os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "256")

# Freed memory the process may hold before the engine hands it back within a batch. Freed blocks fragment the
# heap, so, unreturned, a 1,000-row batch's peak climbed 1,415 -> 2,316 MB over rows 20k-32k of a long run; with
# this check after each micro-batch it stays 270-310 MB above the memory in use, for ~12 trims per 1,000 rows.
FREED_MEMORY_SLACK = 256 * 2**20


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes bfloat16 matrix products natively (CUDA with bf16; CPU with AVX512-BF16 or AMX)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return _cpu_has_bf16()
    return False


@functools.lru_cache(maxsize=1)
def _cpu_has_bf16() -> bool:
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_dtype(dtype: str | torch.dtype, device: torch.device) -> torch.dtype:
    """``auto`` = bfloat16 where the hardware computes it natively, else float32."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        return torch.bfloat16 if native_bf16(device) else torch.float32
    table = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
             "float16": torch.float16, "fp16": torch.float16}
    if dtype not in table:
        raise ValueError(f"unknown dtype {dtype!r}; use 'auto', 'float32', 'bfloat16' or 'float16'")
    return table[dtype]


def default_token_budget(device: torch.device) -> int:
    """Tokens per micro-batch: small on CPU (the activations stay in cache), large on GPUs."""
    env = os.environ.get("HF_PROSPECTOR_TOKEN_BUDGET")
    if env:
        return int(env)
    return 32768 if device.type == "cuda" else 2048


def head_chunk(device: torch.device, compiled: bool) -> int:
    """Positions whose logits are materialised at once. On a CPU the eager log-softmax makes several passes
    over its [positions x vocabulary] float32 block, which must stay in cache (64 positions ran the head
    1.6x faster than 1,024); compiled, they fuse into one pass and 256 is best. GPUs want large blocks."""
    if device.type == "cuda":
        return 1024
    return 256 if compiled else 64


@functools.lru_cache(maxsize=1)
def _malloc_trim():
    """glibc's ``malloc_trim``, or None where the C library has none (macOS, musl)."""
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


def resident_bytes() -> int:
    """This process's resident memory (``/proc/self/statm``); 0 where there is no ``/proc``."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


_resident_after_release = 0  # resident bytes right after the last hand-back (the heap is the process's, so is this)


def release_freed_memory(if_grown_by: int = 0) -> bool:
    """Hand memory that scoring freed back to the operating system; True if some was returned.

    glibc's allocator keeps freed blocks of every size a run allocates (each micro-batch has its own tensor
    shapes), so without this the resident size of a long run climbs with the rows scored. Scorers call it
    after each ``Dataset.map`` batch; it takes milliseconds. With ``if_grown_by``, it does so only once the
    process has grown that many bytes since the last hand-back: the engine's check after every micro-batch,
    which bounds the peak inside a batch too, at the cost of reading ``/proc`` once per micro-batch."""
    global _resident_after_release
    trim = _malloc_trim()
    if trim is None or (if_grown_by and resident_bytes() < _resident_after_release + if_grown_by):
        return False
    released = bool(trim(0))
    _resident_after_release = resident_bytes()
    return released


def attention_kernels(device: torch.device):
    """The attention kernels the engine lets PyTorch choose from: on CUDA all but cuDNN's. cuDNN attention builds
    an execution plan for every new input shape (about 5 ms of CPU per call), and every micro-batch has a new
    shape: with it, 5,000 fresh Alpaca rows took 7.1 s through GPT-2 on an H100, 2.2 s once their shapes had been
    seen, and 2.7 s without it."""
    if device.type != "cuda" or sdpa_kernel is None:
        return contextlib.nullcontext()
    return sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH])


class AlignedHead(torch.nn.Module):
    """A linear output projection padded with zero rows to a multiple of 64, whose extra logits are cut off.

    GPU matrix units want aligned shapes: GPT-2's vocabulary of 50,257 sends the projection to a slow fallback
    kernel (about 94 TFLOP/s on an H100); padded, IFD over 5,000 Alpaca rows took 1.84 s instead of 2.24 s.
    Costs one copy of the projection's weights."""

    def __init__(self, head: torch.nn.Linear, multiple: int = 64):
        super().__init__()
        self.vocab = head.out_features
        extra = -self.vocab % multiple
        self.weight = torch.nn.Parameter(F.pad(head.weight.detach(), (0, 0, 0, extra)), requires_grad=False)
        self.bias = None if head.bias is None else torch.nn.Parameter(F.pad(head.bias.detach(), (0, extra)),
                                                                      requires_grad=False)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return F.linear(hidden, self.weight, self.bias)[..., : self.vocab]


def scoring_head(head: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """The output projection the engine applies: on CUDA an unaligned linear one is padded (:class:`AlignedHead`)."""
    if device.type == "cuda" and isinstance(head, torch.nn.Linear) and head.out_features % 64:
        return AlignedHead(head)
    return head


def logprobs_of(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log-softmax of each row of ``logits`` at its target, without materialising the whole log-softmax."""
    return logits.gather(1, targets[:, None])[:, 0] - torch.logsumexp(logits, dim=-1)


def target_logprobs(head: torch.nn.Module, hidden: torch.Tensor, targets: torch.Tensor,
                    softcap: float | None) -> torch.Tensor:
    """log p(target) at each row of ``hidden``: the output projection and a float32 log-softmax."""
    logits = head(hidden).float()
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    return logprobs_of(logits, targets)


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


class SharedPrefixCache(Cache):
    """One prefix's key/value cache, shared read-only by a batch of continuations.

    Each layer's ``update`` returns the prefix's keys and values, broadcast over the batch, followed by the
    continuation's, and stores nothing: no copy of the prefix per micro-batch. The prefix's keys and values of
    all layers sit in one tensor indexed by the layer number, which a compiled decoder layer takes as a runtime
    integer, so one graph serves every layer (a list lookup would specialise, compiling once per layer).
    Only for caches of plain full-attention layers (:meth:`supports`); sliding windows keep per-layer lengths.
    """

    def __init__(self, prefix: Cache):
        super().__init__(layers=prefix.layers)  # the prefix's layers answer the mask's length questions
        self.keys = torch.stack([layer.keys for layer in prefix.layers])
        self.values = torch.stack([layer.values for layer in prefix.layers])

    @staticmethod
    def supports(cache: Cache) -> bool:
        """Plain full-attention layers, all filled, all of one shape (so they stack)."""
        layers = cache.layers
        plain = all(type(layer) is DynamicLayer and layer.is_initialized for layer in layers)
        return bool(layers) and plain and len({layer.keys.shape for layer in layers}) == 1

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        batch = key_states.shape[0]
        keys = torch.cat([self.keys[layer_idx].expand(batch, -1, -1, -1), key_states], dim=-2)
        values = torch.cat([self.values[layer_idx].expand(batch, -1, -1, -1), value_states], dim=-2)
        return keys, values


@dataclass
class Request:
    """Score ``ids[start:]``, each token predicted from the ones before it (so ``start >= 1``)."""

    ids: list[int]
    start: int


def plan_batches(lengths: list[int], token_budget: int, max_padding: float = 0.25) -> list[list[int]]:
    """Group indices, longest first, so that rows x longest row stays within ``token_budget`` and no row
    is padded by more than ``max_padding`` of the longest (padding is computed and thrown away)."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches: list[list[int]] = []
    for i in order:
        longest = lengths[batches[-1][0]] if batches else 0
        if batches and (len(batches[-1]) + 1) * longest <= token_budget and lengths[i] >= (1 - max_padding) * longest:
            batches[-1].append(i)
        else:
            batches.append([i])
    return batches


class Engine:
    """A causal LM on one device, scoring :class:`Request` lists. Shared by every scorer.

    The model is moved to ``device`` and ``dtype`` in place (``nn.Module.to``), as transformers does; when
    compiled, its decoder layers are compiled in place (``nn.Module.compile``).
    """

    def __init__(self, model, tokenizer, device: str | torch.device = "cpu", dtype: str | torch.dtype = "auto",
                 token_budget: int | None = None, compile: bool | str | None = None):
        self.device = torch.device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        self.model = model.to(device=self.device, dtype=self.dtype).eval()
        self.tokenizer = tokenizer
        self.token_budget = token_budget or default_token_budget(self.device)
        self.pad_id = next(t for t in (tokenizer.pad_token_id, tokenizer.eos_token_id, 0) if t is not None)
        self.backbone = self.model.base_model
        self.head = scoring_head(self.model.get_output_embeddings(), self.device)
        self.softcap = getattr(self.model.config, "final_logit_softcapping", None)
        # Positions the model was trained on (GPT-2's n_positions answers to this name too); None: no stated limit.
        self.context_window: int | None = getattr(self.model.config, "max_position_embeddings", None)
        # transformers 5 renamed `past_key_values=` to `cache=` (the old name goes in 5.40); older releases know only it.
        self._cache_arg = "cache" if "cache" in inspect.signature(self.model.forward).parameters else "past_key_values"
        self.forward_passes = 0  # micro-batches run; tests count work with it
        self._head_only = self._check_head_shortcut()
        self.compile = resolve_compile(compile)
        self.compiled = False  # whether the decoder layers run compiled now
        self.compile_failed: str | None = None  # the compiler's error, once it failed (then eager for good)
        self.eager_seconds = 0.0  # model time before compiling, which "auto" weighs against the compile
        self._target_logprobs = target_logprobs  # compiled along with the layers
        self._attention = self.model.config._attn_implementation  # the model's own, restored if compiling fails
        if self.compile is True:
            self._compile()

    # -- compilation ----------------------------------------------------------------------------
    def _decoder_layers(self) -> torch.nn.ModuleList | None:
        n = getattr(self.model.config, "num_hidden_layers", None)
        return next((m for m in self.backbone.children() if isinstance(m, torch.nn.ModuleList) and len(m) == n), None)

    def _compile(self) -> None:
        layers = self._decoder_layers()
        if layers is None:
            self._give_up_compiling(f"no list of decoder layers found in {type(self.backbone).__name__}")
            return
        for layer in layers:
            layer.compile(dynamic=True)
        self._target_logprobs = torch.compile(target_logprobs, dynamic=True)
        self.compiled = True
        if self.device.type == "cpu":
            # Compiled, the model's own attention arithmetic runs as fast as CPU flash attention, and it keeps no
            # generated kernel per sequence length: flash attention's kernels grow memory with every length met.
            self._set_attention("eager")

    def _give_up_compiling(self, reason: str) -> None:
        for layer in self._decoder_layers() or ():
            layer._compiled_call_impl = None  # undoes nn.Module.compile: the model is left as it came
        self._target_logprobs = target_logprobs
        self._set_attention(self._attention)
        self.compiled = False
        self.compile_failed = reason
        warnings.warn(f"torch.compile is not used ({reason}); scoring continues eagerly", stacklevel=3)

    def _set_attention(self, implementation: str) -> None:
        """Switch the model's attention implementation, where transformers can (models on its attention interface)."""
        setter = getattr(self.model, "set_attn_implementation", None)
        if setter is not None and implementation != self.model.config._attn_implementation:
            setter(implementation)

    def _call(self, fn, *args, **kwargs):
        """``fn(*args, **kwargs)``, where ``fn`` may run compiled code. Passes over a :class:`SharedPrefixCache`
        run compiled with the layer number as a runtime integer; other passes that use a key/value cache run
        eagerly (its per-layer state would recompile every layer). A compiler error falls back to eager for good."""
        if not self.compiled:
            return fn(*args, **kwargs)
        shared = isinstance(kwargs.get(self._cache_arg), SharedPrefixCache)
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
            self._give_up_compiling(f"{type(err).__name__}: {first_line}")
            with torch.compiler.set_stance("force_eager"):
                return fn(*args, **kwargs)

    def _account(self, seconds: float) -> None:
        """Count eager model time; ``compile="auto"`` compiles once it passes ``COMPILE_AFTER_S``. On a GPU this is
        the host's time (the device runs behind it)."""
        if self.compiled or self.compile_failed or self.compile != "auto":
            return
        self.eager_seconds += seconds
        if self.eager_seconds >= COMPILE_AFTER_S:
            self._compile()

    # -- projection -----------------------------------------------------------------------------
    def _check_head_shortcut(self) -> bool:
        """Backbone + output projection must give the model's own log-probabilities; otherwise use the full
        forward. Guards against architectures that rescale logits in ways this module does not know of."""
        ids = torch.arange(8, device=self.device) % self.model.config.vocab_size
        with torch.inference_mode():
            full = self.model(input_ids=ids[None]).logits[0].float().log_softmax(-1)
            hidden = self.backbone(input_ids=ids[None]).last_hidden_state[0]
            mine = target_logprobs(self.head, hidden, ids, self.softcap)
        return bool(torch.allclose(full.gather(1, ids[:, None])[:, 0], mine, atol=1e-3, rtol=1e-3))

    def _gather_logprobs(self, hidden, rows, cols, targets) -> torch.Tensor:
        out = []
        step = head_chunk(self.device, self.compiled)
        for s in range(0, len(rows), step):
            h = hidden[rows[s:s + step], cols[s:s + step]]
            out.append(self._call(self._target_logprobs, self.head, h, targets[s:s + step], self.softcap))
        return torch.cat(out) if out else torch.empty(0, device=self.device)

    # -- batches --------------------------------------------------------------------------------
    def _run_batch(self, reqs: list[Request], past=None) -> torch.Tensor:
        """Log-probs of one right-padded micro-batch (optionally continuing a cached prefix), request after request,
        left on the device."""
        width = max(len(r.ids) for r in reqs)
        ids = torch.full((len(reqs), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(reqs), width), dtype=torch.long)
        rows, cols, targets = [], [], []
        for b, r in enumerate(reqs):
            ids[b, : len(r.ids)] = torch.tensor(r.ids)
            mask[b, : len(r.ids)] = 1
            n = len(r.ids) - r.start
            rows.append(torch.full((n,), b))
            cols.append(torch.arange(r.start - 1, len(r.ids) - 1))
            targets.append(ids[b, r.start: len(r.ids)])
        ids, mask = ids.to(self.device), mask.to(self.device)
        rows, cols, targets = (torch.cat(x).to(self.device) for x in (rows, cols, targets))
        kwargs = {}
        if past is not None:
            cache, plen = past
            mask = torch.cat([torch.ones((len(reqs), plen), dtype=mask.dtype, device=self.device), mask], dim=1)
            kwargs = {self._cache_arg: cache,
                      "position_ids": torch.arange(plen, plen + width, device=self.device).expand(len(reqs), -1)}
        self.forward_passes += 1
        if self._head_only:
            hidden = self._call(self.backbone, input_ids=ids, attention_mask=mask, use_cache=past is not None,
                                **kwargs).last_hidden_state
            lp = self._gather_logprobs(hidden, rows, cols, targets)
        else:
            logits = self._call(self.model, input_ids=ids, attention_mask=mask, use_cache=past is not None,
                                **kwargs).logits
            lp = logprobs_of(logits[rows, cols].float(), targets)
        return lp.float()

    def _run_planned(self, reqs: list[Request], past=None) -> list[np.ndarray]:
        done: list[tuple[list[int], torch.Tensor]] = []
        pending = plan_batches([len(r.ids) for r in reqs], self.token_budget)
        while pending:
            batch = pending.pop(0)
            try:
                cache = None
                if past is not None:
                    cache = past[0]
                    if not isinstance(cache, SharedPrefixCache):  # a cache that grows: each batch its own copy
                        cache = copy.deepcopy(cache)
                        cache.batch_repeat_interleave(len(batch))
                started = time.perf_counter()
                logprobs = self._run_batch([reqs[i] for i in batch], None if past is None else (cache, past[1]))
                if cache is None or isinstance(cache, SharedPrefixCache):  # the passes _call may compile count
                    self._account(time.perf_counter() - started)
                release_freed_memory(if_grown_by=FREED_MEMORY_SLACK)  # after the timing: not model time
            except torch.cuda.OutOfMemoryError:
                if len(batch) == 1:
                    raise
                torch.cuda.empty_cache()
                self.token_budget = max(self.token_budget // 2, 1)
                half = len(batch) // 2
                pending[:0] = [batch[:half], batch[half:]]
                continue
            done.append((batch, logprobs))
        # One copy to the host at the end, not one per micro-batch: on a GPU the host then queues the next
        # micro-batches while the device still works on earlier ones, instead of waiting for each.
        flat = torch.cat([lp for _, lp in done]).cpu().numpy() if done else np.empty(0, dtype=np.float32)
        out: list[np.ndarray] = [flat[:0]] * len(reqs)
        offset = 0
        for batch, _ in done:
            for i in batch:
                n = len(reqs[i].ids) - reqs[i].start
                out[i], offset = flat[offset: offset + n], offset + n
        return out

    @torch.inference_mode()
    def logprobs(self, requests: list[Request]) -> list[np.ndarray]:
        """Per request, the float32 log-probabilities of ``ids[start:]``, in the order given."""
        for r in requests:
            if not 1 <= r.start <= len(r.ids):
                raise ValueError(f"request start {r.start} outside 1..{len(r.ids)}")
        with attention_kernels(self.device):
            return self._run_planned(requests)

    @torch.inference_mode()
    def prefixed_logprobs(self, prefix: list[int], continuations: list[Request]) -> list[np.ndarray]:
        """Like :meth:`logprobs` for ``prefix + c.ids`` for each continuation, encoding the prefix once.

        ``c.start`` indexes into ``c.ids`` and may be 0 (the first continuation token is predicted from the
        prefix's last position).
        """
        if not prefix:
            raise ValueError("prefixed_logprobs needs a non-empty prefix")
        ids = torch.tensor([prefix], device=self.device)
        self.forward_passes += 1
        with attention_kernels(self.device):
            out = self._call(self.model, input_ids=ids, use_cache=True, logits_to_keep=1)
            first = torch.log_softmax(out.logits[0, -1].float(), dim=-1)  # to the host after the continuations
            # Continuations are scored from their own positions; a start of 0 needs the prefix's last logits.
            shifted = [Request(c.ids, max(c.start, 1)) for c in continuations]
            cache = out.cache if self._cache_arg == "cache" else out.past_key_values
            if SharedPrefixCache.supports(cache):
                cache = SharedPrefixCache(cache)
            results = self._run_planned(shifted, past=(cache, len(prefix)))
        first = first.cpu().numpy()
        for k, c in enumerate(continuations):
            if c.start == 0:
                results[k] = np.concatenate([first[c.ids[:1]], results[k]]).astype(np.float32)
        return results
