import math

import numpy as np
import pytest
import torch

from lmtune.data import Example, PackedDataset, PaddedDataset, TokenizedDocs, tokenize_examples
from lmtune.errors import UserError


def make_docs(lengths):
    """Token j of document d has id (d + 1) * 1000 + j, so every token says where it came from.
    The first two tokens of each document are masked (like a start token and a prompt)."""
    ids = np.concatenate([(d + 1) * 1000 + np.arange(n) for d, n in enumerate(lengths)]).astype(np.uint32)
    mask = np.concatenate([np.arange(n) >= 2 for n in lengths])
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    return TokenizedDocs(ids=ids, loss_mask=mask, offsets=offsets)


LENGTHS = np.random.default_rng(0).integers(2, 40, size=30).tolist()


def rows_of(batch):
    """(ids, labels, positions, n_real) per row; in a packed batch only the last row is short."""
    b, t = batch.input_ids.shape
    reals = [t] * (b - 1) + [batch.n_tokens - (b - 1) * t]
    return [(batch.input_ids[i], batch.labels[i], batch.position_ids[i], reals[i]) for i in range(b)]


def check_packed_epoch(ds, docs, epoch, batch_size):
    """Check every batch of an epoch against the rules; return the documents in stream order."""
    batches = list(ds.batches(epoch, batch_size))
    assert len(batches) == ds.num_batches(batch_size) == math.ceil(ds.num_blocks() / batch_size)
    stream, n_blocks = [], 0
    for batch in batches:
        assert batch.attention_mask is None
        assert batch.input_ids.dtype == batch.labels.dtype == batch.position_ids.dtype == torch.long
        assert batch.n_target_tokens == int((batch.labels != -100).sum())
        for ids, labels, positions, n_real in rows_of(batch):
            n_blocks += 1
            assert n_real == ds.block_size or n_blocks == ds.num_blocks()  # only the last block is short
            for t in range(n_real):
                doc, j = divmod(int(ids[t]), 1000)
                starts_segment = t == 0 or doc != int(ids[t - 1]) // 1000
                assert positions[t] == (0 if starts_segment else positions[t - 1] + 1)
                target = docs.loss_mask[docs.offsets[doc - 1] + j] and not starts_segment
                assert labels[t] == (ids[t] if target else -100)
                stream.append((doc - 1, j))
            assert positions[n_real:].tolist() == list(range(len(ids) - n_real))  # padding: own segment
            assert (labels[n_real:] == -100).all()
    assert n_blocks == ds.num_blocks() == math.ceil(docs.n_tokens / ds.block_size)
    # Nothing dropped or repeated: the stream is every document, whole and in token order.
    assert len(stream) == docs.n_tokens
    order = [doc for doc, j in stream if j == 0]
    assert sorted(order) == list(range(len(docs)))
    expected = [(d, j) for d in order for j in range(docs.offsets[d + 1] - docs.offsets[d])]
    assert stream == expected
    return order


@pytest.mark.parametrize("block_size", [2, 7, 16, 64, 10_000])
@pytest.mark.parametrize("batch_size", [1, 3])
def test_packed_blocks_follow_the_rules(block_size, batch_size):
    docs = make_docs(LENGTHS)
    ds = PackedDataset(docs, block_size, shuffle=True, seed=1)
    check_packed_epoch(ds, docs, epoch=0, batch_size=batch_size)


def test_packed_without_shuffle_keeps_document_order():
    docs = make_docs(LENGTHS)
    ds = PackedDataset(docs, 16, shuffle=False)
    assert check_packed_epoch(ds, docs, 0, 4) == check_packed_epoch(ds, docs, 5, 4) == list(range(len(LENGTHS)))


def test_packed_order_depends_on_seed_and_epoch_only():
    docs = make_docs(LENGTHS)
    a, b = PackedDataset(docs, 16, seed=7), PackedDataset(docs, 16, seed=7)
    assert check_packed_epoch(a, docs, 2, 4) == check_packed_epoch(b, docs, 2, 4)
    assert check_packed_epoch(a, docs, 2, 4) != check_packed_epoch(a, docs, 3, 4)
    assert check_packed_epoch(a, docs, 2, 4) != check_packed_epoch(PackedDataset(docs, 16, seed=8), docs, 2, 4)


def same_batches(xs, ys):
    assert len(xs) == len(ys)
    for x, y in zip(xs, ys):
        assert torch.equal(x.input_ids, y.input_ids) and torch.equal(x.labels, y.labels)
        assert torch.equal(x.position_ids, y.position_ids)
        assert (x.n_tokens, x.n_target_tokens) == (y.n_tokens, y.n_target_tokens)
        assert (x.attention_mask is None) == (y.attention_mask is None)
        assert x.attention_mask is None or torch.equal(x.attention_mask, y.attention_mask)


@pytest.mark.parametrize("cls", [PackedDataset, PaddedDataset])
def test_resuming_at_start_equals_the_tail_and_skips_building_earlier_batches(cls):
    ds = cls(make_docs(LENGTHS), 16, seed=3)
    full = list(ds.batches(4, 3))
    built = []
    real_batch = ds._batch
    ds._batch = lambda *args: built.append(args[1]) or real_batch(*args)
    for k in range(len(full) + 1):
        built.clear()
        same_batches(list(ds.batches(4, 3, start=k)), full[k:])
        assert len(built) == len(full) - k


@pytest.mark.faults
def test_data_smaller_than_one_block_is_one_short_block():
    docs = make_docs([3, 4])
    (batch,) = PackedDataset(docs, 100, shuffle=False).batches(0, 8)
    assert batch.input_ids.shape == (1, 7) and batch.n_tokens == 7
    assert batch.position_ids.tolist() == [[0, 1, 2, 0, 1, 2, 3]]


def test_short_last_block_is_padded_as_its_own_segment():
    docs = make_docs([5, 5])  # 10 tokens, blocks of 4: 4 + 4 + 2
    (batch,) = PackedDataset(docs, 4, shuffle=False).batches(0, 3)
    assert batch.input_ids.shape == (3, 4) and batch.n_tokens == 10
    assert batch.position_ids.tolist() == [[0, 1, 2, 3], [0, 0, 1, 2], [0, 1, 0, 1]]
    assert batch.labels.tolist() == [[-100, -100, 1002, 1003], [-100, -100, -100, 2002],
                                     [-100, 2004, -100, -100]]


@pytest.mark.parametrize("block_size", [0, 1, 2.5])
def test_block_size_must_be_at_least_two(block_size):
    with pytest.raises(UserError, match="block_size"):
        PackedDataset(make_docs([4]), block_size)


def test_eos_is_a_target_unless_it_starts_a_block(tokenizer_no_bos):
    tok = tokenizer_no_bos  # pad == eos == start token: only positions can tell them apart
    examples = [Example("Question: two plus two?", " Answer: four."), Example("", "Hello world")] * 5
    docs = tokenize_examples(examples, tok)
    ds = PackedDataset(docs, 8, shuffle=False)
    eos_ends = set((docs.offsets[1:] - 1).tolist())
    stream_pos = 0
    for batch in ds.batches(0, 2):
        for ids, labels, positions, n_real in rows_of(batch):
            for t in range(n_real):
                if stream_pos in eos_ends:
                    assert labels[t] == (tok.eos_token_id if t > 0 else -100)
                elif stream_pos in docs.offsets[:-1]:
                    assert labels[t] == -100  # the start token is context, never a target
                stream_pos += 1
    assert stream_pos == docs.n_tokens


@pytest.mark.faults
def test_padded_rows_split_long_documents_and_drop_nothing():
    lengths = [3, 10, 4, 9]
    docs = make_docs(lengths)
    ds = PaddedDataset(docs, 4, shuffle=False)
    assert ds.num_blocks() == sum(math.ceil(n / 4) for n in lengths) == 8
    real = []
    for batch in ds.batches(0, 3):
        assert batch.input_ids.shape[1] == int(batch.attention_mask.sum(1).max())  # T = longest row
        assert batch.n_tokens == int(batch.attention_mask.sum())
        for ids, mask in zip(batch.input_ids, batch.attention_mask):
            n = int(mask.sum())
            assert mask.tolist() == [1] * n + [0] * (len(mask) - n)
            real.append(ids[:n].tolist())
    assert [len(r) for r in real] == [3, 4, 4, 2, 4, 4, 4, 1]
    assert sum(real, []) == docs.ids.tolist()


def test_padded_labels_and_positions():
    docs = make_docs([3, 6])
    (batch,) = PaddedDataset(docs, 4, shuffle=False).batches(0, 3)
    assert batch.input_ids.shape == (3, 4)
    assert batch.attention_mask.tolist() == [[1, 1, 1, 0], [1, 1, 1, 1], [1, 1, 0, 0]]
    assert batch.position_ids.tolist() == [[0, 1, 2, 3]] * 3
    assert batch.labels.tolist() == [[-100, -100, 1002, -100], [-100, -100, 2002, 2003],
                                     [-100, 2005, -100, -100]]
    assert batch.n_target_tokens == 4 and batch.n_tokens == 9


def test_padded_shuffle_is_seeded_by_epoch():
    docs = make_docs(LENGTHS)
    ds = PaddedDataset(docs, 16, seed=2)
    first = lambda epoch: [b.input_ids[:, 0].tolist() for b in ds.batches(epoch, 4)]  # noqa: E731
    assert first(1) == first(1) != first(2)
    assert sorted(sum(first(1), [])) == sorted(sum(first(2), []))
