"""The new rows of an extended vocabulary move only when the step read their tokens.

Every step's softmax pushes down the logit of every token it did not pick, so each new row
of a tied or untied head gets a small gradient on every step, read or not. AdamW divides by
the root of that gradient's own running square, so the push-down of a row no text has shown
moves it as far per step as a real read: measured on SmolLM2 + 20,000 new rows after 200
LoRA steps at lr 1e-3 (benchmarks/RESULTS.md), the 12,723 rows never read had moved 0.73 (of
a norm near 2), the 157 read ten times or more only 0.28, and the never-read pieces' share of
the next-token mass fell from 37% to 22% although they are 30% of the held-out text's tokens.
Their starting rows (vocab/extend.py: the mean of the rows they replace) are the best guess
until the text reads them, so their gradient is dropped before clipping and the update, as
in the lazy Adam of sparse embeddings (TensorFlow's LazyAdam): a never-read row keeps its
start, a read one keeps its moments and moves on from them. Old rows, and the new rows a
step reads as input or target, train as before.
"""

from __future__ import annotations

import torch

from lmtune.distributed import all_sum
from lmtune.fast.trainable_rows import token_layer


class UnreadRows:
    """`new_ids`: the extension's token ids (consecutive). Finds the parameters that hold
    those rows in `model`: PEFT's trainable-token deltas under LoRA, the embedding and an
    untied head otherwise (when they train). Nothing to do for a run without new rows, or
    under FSDP, whose gradients are shards (the rows then train densely, as before)."""

    def __init__(self, model, new_ids: list[int] | None, sharded: bool = False):
        self.first = new_ids[0] if new_ids else 0
        self.count = len(new_ids) if new_ids else 0
        # (param, positions of new rows in it, their token ids - first)
        self.targets: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        if not self.count or sharded:
            return
        seen: set[int] = set()
        for module in (model.get_input_embeddings(), model.get_output_embeddings()):
            layer = token_layer(module) if module is not None else None
            if layer is not None:
                for adapter, delta in layer.trainable_tokens_delta.items():
                    tokens = torch.as_tensor(layer.token_indices[adapter], dtype=torch.long)
                    self._add(delta, torch.arange(len(tokens)), tokens, seen)
            elif module is not None:
                tokens = torch.arange(self.first, min(self.first + self.count,
                                                      module.weight.shape[0]))
                self._add(module.weight, tokens, tokens, seen)

    def _add(self, param, positions, tokens, seen: set[int]) -> None:
        new = (tokens >= self.first) & (tokens < self.first + self.count)
        if param.requires_grad and id(param) not in seen and bool(new.any()):
            seen.add(id(param))
            self.targets.append((param, positions[new].to(param.device),
                                 (tokens[new] - self.first).to(param.device)))

    def drop(self, micro: list) -> None:
        """After the step's backward passes: zero the gradient rows of new tokens that no
        micro-batch of the step (on any rank) holds."""
        if not self.targets:
            return
        device = self.targets[0][0].device
        read = torch.zeros(self.count, device=device)
        for batch in micro:
            ids = batch.input_ids.to(device).flatten() - self.first
            ids = ids[(ids >= 0) & (ids < self.count)]
            read[ids] = 1.0
        read = all_sum(read) > 0  # DDP averaged the gradients over every rank's reads
        for param, positions, tokens in self.targets:
            if param.grad is not None:
                unread = ~read.to(param.device)[tokens]
                param.grad[positions[unread]] = 0
