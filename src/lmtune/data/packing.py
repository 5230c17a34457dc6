"""Cut tokenized documents into fixed-size blocks and batch them.

Packed (default): the epoch's documents, in a seeded shuffled order, form one stream cut
every `block_size` tokens. Nothing is dropped: a document continues in the next block and
the tail forms a last, shorter block, so there are always ceil(n_tokens / block_size)
blocks. `position_ids` restart at 0 at every segment (a document's piece inside a block);
the training loop turns them into a block-diagonal causal mask, so documents sharing a
block never see each other.

Padded (--no-pack): one document per row, long ones cut into block_size pieces.

Labels are set by position, never by token id (GPT-2's pad token is its EOS, and masking
it by id would teach the model never to stop): a token is a target where its loss_mask is
True and it is not the first token of its segment, which has nothing before it to predict
it from.
"""

from collections.abc import Iterator
from dataclasses import dataclass, replace

import numpy as np
import torch

from lmtune.data.tokenize import TokenizedDocs
from lmtune.errors import UserError

IGNORE = -100  # label value that torch's cross_entropy skips (its ignore_index default)
PAD_ID = 0  # any id works: padding is never a target and never attended to by real tokens


@dataclass
class Batch:
    input_ids: torch.Tensor  # (B, T) long
    labels: torch.Tensor  # (B, T) long, -100 = no loss
    position_ids: torch.Tensor  # (B, T) long
    attention_mask: torch.Tensor | None  # (B, T) long 1/0 for padded batches; None for packed
    n_target_tokens: int  # number of labels != -100 (the loss is normalised by it)
    n_tokens: int  # number of real (non-padding) tokens


def no_targets(batch):
    """A stand-in for a process whose share of a batch is empty: it runs the forward and
    backward passes like the others (DDP and FSDP need every process in each collective)
    and counts nothing in the loss."""
    return replace(batch, labels=torch.full_like(batch.labels, IGNORE), n_target_tokens=0,
                   n_tokens=0)


class _Blocks:
    """What both datasets share: block counting, batch slicing and the labels rule."""

    def __init__(self, docs: TokenizedDocs, block_size: int, shuffle: bool, seed: int):
        if not isinstance(block_size, (int, np.integer)) or block_size < 2:
            # One token per block would leave nothing to learn: every token starts a segment.
            raise UserError(f"block_size must be an integer of at least 2, got {block_size!r}",
                            hint="e.g. --block-size 512 (at most the model's context length)")
        self.docs, self.block_size, self.shuffle, self.seed = docs, block_size, shuffle, seed

    def num_blocks(self) -> int:
        raise NotImplementedError

    def num_batches(self, batch_size: int) -> int:
        return -(-self.num_blocks() // batch_size)

    def batches(self, epoch: int, batch_size: int, start: int = 0, *, rank: int = 0,
                world: int = 1) -> Iterator[Batch]:
        """Batches of `batch_size` blocks for `epoch`, from batch index `start` (for resuming).

        The order depends only on (seed, epoch), so batches before `start` are skipped
        without being built. Under `world` processes, batch i is process `rank`'s share of
        the `batch_size * world` blocks that batch i of one process with that batch size
        holds; only those blocks are built.
        """
        if batch_size < 1 or start < 0:
            raise ValueError(f"batch_size must be >= 1 and start >= 0, got {batch_size}, {start}")
        plan = self._epoch_plan(epoch)
        n_blocks = self.num_blocks()
        step = batch_size * world
        for first in range(start * step, n_blocks, step):
            mine = first + rank * batch_size
            if mine >= n_blocks:  # the epoch's last batch left this process nothing
                yield no_targets(self._batch(plan, first, first + 1))
            else:
                yield self._batch(plan, mine, min(mine + batch_size, n_blocks))

    def _permutation(self, n: int, epoch: int) -> np.ndarray:
        if not self.shuffle:
            return np.arange(n)
        return np.random.default_rng([self.seed, epoch]).permutation(n)

    def _epoch_plan(self, epoch: int):
        """Whatever `_batch` needs to build any block of this epoch (computed once)."""
        raise NotImplementedError

    def _batch(self, plan, first: int, end: int) -> Batch:
        """The batch made of blocks first..end-1 of the epoch."""
        raise NotImplementedError


class PackedDataset(_Blocks):
    def __init__(self, docs: TokenizedDocs, block_size: int, *, shuffle: bool = True, seed: int = 0):
        super().__init__(docs, block_size, shuffle, seed)
        self._lengths = docs.lengths
        self._n_tokens = int(self._lengths.sum())

    def num_blocks(self) -> int:
        return -(-self._n_tokens // self.block_size)

    def _epoch_plan(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        # The document order, and where each document starts in the epoch's stream: O(n_docs)
        # once per epoch; nothing per token until a batch is asked for.
        order = self._permutation(len(self.docs), epoch)
        stream_starts = np.zeros(len(order) + 1, dtype=np.int64)  # (n_docs + 1,)
        np.cumsum(self._lengths[order], out=stream_starts[1:])
        return order, stream_starts

    def _batch(self, plan: tuple[np.ndarray, np.ndarray], first: int, end: int) -> Batch:
        order, stream_starts = plan
        size, n_tokens = self.block_size, self._n_tokens
        # Cost: O(batch tokens * log n_docs).
        pos = np.arange(first * size, min(end * size, n_tokens), dtype=np.int64)  # stream positions
        doc = np.searchsorted(stream_starts, pos, side="right") - 1  # index into `order`
        src = self.docs.starts[order[doc]] + (pos - stream_starts[doc])  # index into docs.ids
        segment_start = np.maximum(stream_starts[doc], (pos // size) * size)
        positions = pos - segment_start

        n_real = len(pos)
        n_rows = end - first
        width = size if n_rows > 1 else n_real  # only the epoch's last block can be short
        pad = n_rows * width - n_real
        ids = np.concatenate([self.docs.ids[src].astype(np.int64), np.full(pad, PAD_ID)])
        targets = self.docs.loss_mask[src] & (positions > 0)
        labels = np.concatenate([np.where(targets, ids[:n_real], IGNORE), np.full(pad, IGNORE)])
        # Padding is its own segment (positions 0..pad-1), so the block-diagonal mask keeps
        # it apart from the real tokens.
        positions = np.concatenate([positions, np.arange(pad)])
        return Batch(
            input_ids=torch.from_numpy(ids.reshape(n_rows, width)),
            labels=torch.from_numpy(labels.astype(np.int64).reshape(n_rows, width)),
            position_ids=torch.from_numpy(positions.astype(np.int64).reshape(n_rows, width)),
            attention_mask=None,
            n_target_tokens=int(targets.sum()),
            n_tokens=n_real,
        )


class PaddedDataset(_Blocks):
    """--no-pack: one document per row (a document longer than block_size is cut into
    block_size pieces, each its own row, nothing dropped), right-padded to the longest row
    of the batch, attention_mask 1/0."""

    def __init__(self, docs: TokenizedDocs, block_size: int, *, shuffle: bool = True, seed: int = 0):
        super().__init__(docs, block_size, shuffle, seed)
        lengths = docs.lengths
        pieces = -(-lengths // block_size)  # rows per document
        doc = np.repeat(np.arange(len(lengths)), pieces)
        # k-th piece of its document: 0, 1, ... restarting at each document.
        k = np.arange(len(doc)) - np.repeat(np.cumsum(pieces) - pieces, pieces)
        self._row_start = docs.starts[doc] + k * block_size  # (n_rows,) index into docs.ids
        self._row_len = np.minimum(block_size, lengths[doc] - k * block_size)  # (n_rows,)

    def num_blocks(self) -> int:
        return len(self._row_start)

    def _epoch_plan(self, epoch: int) -> np.ndarray:
        # Rows, not documents, are shuffled: every row is an independent sequence.
        return self._permutation(self.num_blocks(), epoch)

    def _batch(self, order: np.ndarray, first: int, end: int) -> Batch:
        rows = order[first:end]
        starts, lens = self._row_start[rows], self._row_len[rows]  # (B,)
        width = int(lens.max())
        col = np.arange(width)  # (T,)
        real = col[None, :] < lens[:, None]  # (B, T)
        src = np.where(real, starts[:, None] + col[None, :], 0)
        ids = np.where(real, self.docs.ids[src].astype(np.int64), PAD_ID)
        targets = real & self.docs.loss_mask[src] & (col[None, :] > 0)
        labels = np.where(targets, ids, IGNORE)
        # Padding positions simply continue (always < block_size, so within the model's range).
        positions = np.broadcast_to(col, real.shape).astype(np.int64)
        return Batch(
            input_ids=torch.from_numpy(ids),
            labels=torch.from_numpy(labels.astype(np.int64)),
            position_ids=torch.from_numpy(positions),
            attention_mask=torch.from_numpy(real.astype(np.int64)),
            n_target_tokens=int(targets.sum()),
            n_tokens=int(lens.sum()),
        )
