"""The running batch of one model: continuous batching over a shared KV cache.

Every row is one choice of one request. Rows are left-padded and right-aligned: all rows take
a decoding step together, so each row's newest token sits in the last column, and a row's
position ids count only its own (unmasked) tokens. That alignment is what lets requests join
and leave between steps:

- join: new prompts are prefilled as a small batch of their own, then their cache is glued
  under the running one (the narrower of the two is padded on the left with masked zeros);
- leave: finished or cancelled rows are dropped from the cache, and columns that are padding
  in every row are trimmed, so the width stays the longest live row, never past the context.

Joining needs plain DynamicCache layers (full attention). Models whose cache has sliding-window
or other special layers still batch requests that arrive together, but new requests wait for
the batch to empty.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lmtune.fast.head_matmul import decoding_head
from lmtune.models.generate import left_pad
from lmtune.serving.registry import BASE_ROWS
from lmtune.serving.sampling import next_tokens

# A stop string can end in text that is not decoded yet; streamed text holds back any tail that
# could still become a stop string, and an unfinished UTF-8 character (decoded as U+FFFD).
REPLACEMENT = "\ufffd"


class Row:
    __slots__ = ("job", "index", "tokens", "sent")

    def __init__(self, job, index: int):
        self.job, self.index = job, index
        self.tokens: list[int] = []
        self.sent = 0  # characters of the decoded text already sent

    def push(self, token: int) -> bool:
        """Add a generated token and send what is final; True when the row is done."""
        job, s = self.job, self.job.sampling
        self.tokens.append(token)
        served = job.served
        if token in served.eos_ids:
            return self._end(served.tokenizer.decode(self.tokens[:-1], skip_special_tokens=True),
                             "stop")
        text = served.tokenizer.decode(self.tokens, skip_special_tokens=True)
        cuts = [text.find(stop) for stop in s.stop if stop in text]
        if cuts:
            return self._end(text[:min(cuts)], "stop")
        if len(self.tokens) >= s.max_tokens:
            return self._end(text, "length")
        safe = len(text) - _held_back(text, s.stop)
        while safe > self.sent and text[safe - 1] == REPLACEMENT:
            safe -= 1
        if safe > self.sent:
            job.emit("text", self.index, text[self.sent:safe])
            self.sent = safe
        return False

    def _end(self, text: str, reason: str) -> bool:
        if len(text) > self.sent:
            self.job.emit("text", self.index, text[self.sent:])
        self.job.emit("end", self.index, reason, len(self.tokens))
        return True


def _held_back(text: str, stops: tuple[str, ...]) -> int:
    """Length of the longest end of `text` that is the start of a stop string."""
    longest = 0
    for stop in stops:
        for k in range(min(len(stop) - 1, len(text)), longest, -1):
            if text.endswith(stop[:k]):
                longest = k
                break
    return longest


def _pad_cache_left(cache, columns: int) -> None:
    for layer in cache.layers:
        layer.keys = F.pad(layer.keys, (0, 0, columns, 0))       # (B, H, T, D): pad T
        layer.values = F.pad(layer.values, (0, 0, columns, 0))


def _joinable(cache) -> bool:
    from transformers.cache_utils import DynamicLayer
    return all(type(layer) is DynamicLayer and layer.is_initialized for layer in cache.layers)


class DecodeBatch:
    def __init__(self, group):
        self.group = group
        self.model = group.model
        self.device = next(self.model.parameters()).device
        self.rows: list[Row] = []
        self.cache = None
        self.mask: torch.Tensor | None = None   # (B, W) 1 for real tokens, 0 for padding
        self.joinable = True

    @property
    def jobs(self) -> set:
        return {row.job for row in self.rows}

    def can_take(self) -> bool:
        return not self.rows or self.joinable

    def _forward(self, ids, mask, positions, cache, rows_adapters):
        kwargs = {}
        if self.group.is_peft:
            only = rows_adapters[0] if len(set(rows_adapters)) == 1 else None
            if only is not None and only != BASE_ROWS:
                # Every row wants the same adapter: PEFT's plain path. Its mixed-adapter path
                # (index per adapter in every LoRA layer) made a SmolLM2-135M step on the CPU
                # about 1.5x slower, for B=1 and for B=16 alike.
                if self.model.active_adapter != only:
                    self.model.set_adapter(only, inference_mode=True)
            else:
                kwargs["adapter_names"] = rows_adapters
        with decoding_head(self.model):  # the CPU's faster head for a few rows
            out = self.model(input_ids=ids.to(self.device), attention_mask=mask,
                             position_ids=positions, past_key_values=cache, use_cache=True,
                             logits_to_keep=1, **kwargs)
        return out.logits[:, -1].float().cpu(), out.past_key_values  # (B, V)

    def add(self, jobs: list) -> None:
        """Prefill the jobs' prompts and add their rows; each row gets its first token."""
        from transformers import DynamicCache

        prompts = [(job, p) for job in jobs for p in job.prompts]
        ids, mask = left_pad([p for _, p in prompts], pad_id=0)
        mask = mask.to(self.device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        logits, cache = self._forward(ids, mask, positions, DynamicCache(config=self.model.config),
                                      [job.served.row_adapter for job, _ in prompts])
        # Each prompt was computed once; its n choices share that prefill.
        repeat = torch.tensor([k for k, (job, _) in enumerate(prompts) for _ in range(job.n)])
        if len(repeat) > len(prompts):
            for layer in cache.layers:
                layer.batch_select_indices(repeat.to(self.device))
            mask, logits = mask[repeat.to(self.device)], logits[repeat]
        rows = [Row(job, i) for job in jobs for i in range(job.choices)]
        self._merge(rows, cache, mask)
        self._advance(logits, first=len(self.rows) - len(rows))

    def _merge(self, rows: list[Row], cache, mask: torch.Tensor) -> None:
        if not self.rows:
            self.rows, self.cache, self.mask = rows, cache, mask
            self.joinable = _joinable(cache)
            return
        width, new_width = self.mask.shape[1], mask.shape[1]
        if width < new_width:
            _pad_cache_left(self.cache, new_width - width)
            self.mask = F.pad(self.mask, (new_width - width, 0))
        elif new_width < width:
            _pad_cache_left(cache, width - new_width)
            mask = F.pad(mask, (width - new_width, 0))
        for mine, theirs in zip(self.cache.layers, cache.layers):
            mine.keys = torch.cat([mine.keys, theirs.keys])
            mine.values = torch.cat([mine.values, theirs.values])
        self.mask = torch.cat([self.mask, mask])
        self.rows = self.rows + rows

    def step(self) -> None:
        """One decoding step for every live row."""
        self._keep([i for i, row in enumerate(self.rows) if not row.job.cancelled])
        if not self.rows:
            return
        ids = torch.tensor([[row.tokens[-1]] for row in self.rows])
        self.mask = F.pad(self.mask, (0, 1), value=1)
        positions = self.mask.sum(-1, keepdim=True) - 1     # (B, 1): the row's own length
        logits, self.cache = self._forward(ids, self.mask, positions, self.cache,
                                           [row.job.served.row_adapter for row in self.rows])
        self._advance(logits)

    def _advance(self, logits: torch.Tensor, first: int = 0) -> None:
        """Sample a token for rows[first:] (whose logits these are) and drop finished rows."""
        rows = self.rows[first:]
        tokens = next_tokens(logits, rows)
        done = {first + i for i, (row, t) in enumerate(zip(rows, tokens)) if row.push(t)}
        if done:
            self._keep([i for i in range(len(self.rows)) if i not in done])

    def _keep(self, keep: list[int]) -> None:
        if len(keep) == len(self.rows):
            return
        if not keep:
            self.reset()
            return
        index = torch.tensor(keep, device=self.device)
        for layer in self.cache.layers:
            layer.batch_select_indices(index)
        self.mask = self.mask[index]
        self.rows = [self.rows[i] for i in keep]
        # Columns that are padding in every remaining row carry nothing: trim them.
        used = self.mask.any(dim=0).nonzero()
        start = int(used[0]) if len(used) else 0
        if start and self.joinable:
            for layer in self.cache.layers:
                layer.keys = layer.keys[:, :, start:]
                layer.values = layer.values[:, :, start:]
            self.mask = self.mask[:, start:]

    def fail(self, message: str) -> None:
        for job in self.jobs:
            job.emit("error", message)
        self.reset()

    def reset(self) -> None:
        self.rows, self.cache, self.mask, self.joinable = [], None, None, True
