"""Micro-batching: many sequences scored at once, fast, with results in the order given.

Every scorer reduces to one request: "for each sequence, the log-probability of tokens ``ids[start:]`` given
what precedes them". The engine sorts the sequences by length (longest first), packs them into right-padded
micro-batches under a token budget (``rows x longest row <= token_budget``), runs each, copies the results to
the host once per call and restores the original order. On CUDA an out-of-memory error halves the micro-batch
and retries.
"""

from __future__ import annotations

import copy
import inspect
import time
from dataclasses import dataclass

import numpy as np
import torch

from . import memory
from .compilation import DeferredCompiler
from .hardware import attention_kernels, default_token_budget, head_chunk, resolve_dtype, scoring_head
from .prefix_cache import SharedPrefixCache
from .projection import gather_logprobs, head_matches_model, logprobs_of


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
    compiled, its decoder layers are compiled in place (:class:`~.compilation.DeferredCompiler`). The engine owns
    the memory policy: freed memory goes back to the OS after each call (and within one, see :mod:`.memory`).
    """

    def __init__(self, model, tokenizer, device: str | torch.device = "cpu", dtype: str | torch.dtype = "auto",
                 token_budget: int | None = None, compile: bool | str | None = None):
        memory.bound_onednn_cache()  # before the first pass: oneDNN reads it once
        self.device = torch.device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        self.model = model.to(device=self.device, dtype=self.dtype).eval()
        self.tokenizer = tokenizer
        self.token_budget = token_budget or default_token_budget(self.device, self.dtype)
        self.head_positions: int | None = None  # positions projected at once; None: hardware.head_chunk's choice
        self.pad_id = next(t for t in (tokenizer.pad_token_id, tokenizer.eos_token_id, 0) if t is not None)
        self.backbone = self.model.base_model
        self.head = scoring_head(self.model.get_output_embeddings(), self.device, self.dtype)
        self.softcap = getattr(self.model.config, "final_logit_softcapping", None)
        # Positions the model was trained on (GPT-2's n_positions answers to this name too); None: no stated limit.
        self.context_window: int | None = getattr(self.model.config, "max_position_embeddings", None)
        # transformers 5 renamed `past_key_values=` to `cache=` (the old name goes in 5.40); older releases know only it.
        self._cache_arg = "cache" if "cache" in inspect.signature(self.model.forward).parameters else "past_key_values"
        self.forward_passes = 0  # micro-batches run; tests count work with it
        self._head_only = head_matches_model(self.model, self.backbone, self.head, self.softcap, self.device)
        self.compiler = DeferredCompiler(self.model, self.device, compile, self._cache_arg)

    @property
    def compiled(self) -> bool:
        """Whether the decoder layers run compiled now."""
        return self.compiler.compiled

    @property
    def compile_failed(self) -> str | None:
        """The compiler's error, once it failed (then eager for good)."""
        return self.compiler.failed

    @property
    def eager_seconds(self) -> float:
        """Model time before compiling, which ``compile="auto"`` weighs against the compile."""
        return self.compiler.eager_seconds

    def _project(self, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return self.compiler.run(self.compiler.target_logprobs, self.head, hidden, targets, self.softcap)

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
            hidden = self.compiler.run(self.backbone, input_ids=ids, attention_mask=mask, use_cache=past is not None,
                                         **kwargs).last_hidden_state
            chunk = self.head_positions or head_chunk(self.device, self.compiled, self.dtype, self.head)
            lp = gather_logprobs(self._project, hidden, rows, cols, targets, chunk)
        else:
            logits = self.compiler.run(self.model, input_ids=ids, attention_mask=mask, use_cache=past is not None,
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
                if cache is None or isinstance(cache, SharedPrefixCache):  # the passes that may run compiled count
                    self.compiler.record(time.perf_counter() - started, sum(len(reqs[i].ids) for i in batch))
                # Bounds the peak within a call (after the timing: not model time).
                memory.release_freed_memory(if_grown_by=memory.FREED_MEMORY_SLACK)
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
            results = self._run_planned(requests)
        memory.release_freed_memory()  # a long run's memory stays flat, call after call
        return results

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
            out = self.compiler.run(self.model, input_ids=ids, use_cache=True, logits_to_keep=1)
            first = torch.log_softmax(out.logits[0, -1].float(), dim=-1)  # to the host after the continuations
            # Continuations are scored from their own positions; a start of 0 needs the prefix's last logits.
            shifted = [Request(c.ids, max(c.start, 1)) for c in continuations]
            cache = out.cache if self._cache_arg == "cache" else out.past_key_values
            if SharedPrefixCache.supports(cache):
                cache = SharedPrefixCache(cache)
            results = self._run_planned(shifted, past=(cache, len(prefix)))
        del out, cache  # the prefix's keys and values, freed before the hand-back
        first = first.cpu().numpy()
        for k, c in enumerate(continuations):
            if c.start == 0:
                results[k] = np.concatenate([first[c.ids[:1]], results[k]]).astype(np.float32)
        memory.release_freed_memory()
        return results
