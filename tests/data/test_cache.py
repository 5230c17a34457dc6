"""The token cache: same documents as tokenizing in memory, memory-mapped, keyed by content,
options and tokenizer, and streamed for plain text."""

from types import SimpleNamespace

import numpy as np
import pytest

from lmtune.data import build_examples, cache, read_records, tokenize_examples
from lmtune.errors import UserError


def _opts(**kw):
    base = dict(format=None, column=None, template=None, prompt_template=None,
                completion_template=None, split_on=None, encoding="utf-8")
    return SimpleNamespace(**{**base, **kw})


def _in_memory(path, opts, tokenizer):
    records = read_records(path, fmt=opts.format, encoding=opts.encoding, split_on=opts.split_on)
    return tokenize_examples(build_examples(records, source=str(path), column=opts.column,
                                            template=opts.template), tokenizer)


def _same(a, b):
    np.testing.assert_array_equal(np.asarray(a.ids), np.asarray(b.ids))
    np.testing.assert_array_equal(np.asarray(a.loss_mask), np.asarray(b.loss_mask))
    np.testing.assert_array_equal(a.offsets, b.offsets)


TEXT = "\ufeffThe quick brown fox.\n\nQuestion: what is two plus two?\nAnswer: four.\n\n\n" \
       "Hello world, this is lmtune.\n"


@pytest.mark.parametrize("split_on", ["\\n\\n", "\\n"])
def test_streamed_text_pieces_equal_in_memory_tokenization(tmp_path, tokenizer, monkeypatch,
                                                            split_on):
    path = tmp_path / "c.txt"
    path.write_text(TEXT * 50, encoding="utf-8")
    monkeypatch.setattr(cache, "READ_BLOCK", 64)  # pieces straddle many read blocks
    monkeypatch.setattr(cache, "EXAMPLES_PER_CHUNK", 7)
    opts = _opts(split_on=split_on)
    got = cache.prepare(path, opts, tokenizer, root=tmp_path / "cache")
    _same(got.docs, _in_memory(path, opts, tokenizer))
    assert isinstance(got.docs.ids, np.memmap) and got.docs.ids.dtype == np.uint16
    assert got.stats["documents"] == len(got.docs) and not got.cached


@pytest.mark.faults
def test_one_large_document_is_tokenized_in_pieces_without_losing_text(tmp_path, tokenizer,
                                                                        monkeypatch):
    path = tmp_path / "book.txt"
    path.write_text("  \n" + TEXT * 40 + "\n\n", encoding="utf-8")
    monkeypatch.setattr(cache, "READ_BLOCK", 100)
    monkeypatch.setattr(cache, "TEXT_CHUNK", 150)
    got = cache.prepare(path, _opts(), tokenizer, root=tmp_path / "cache").docs
    want = _in_memory(path, _opts(), tokenizer)
    assert len(got) == 1 and got.ids[0] == tokenizer.bos_token_id
    assert got.ids[-1] == tokenizer.eos_token_id and got.loss_mask[-1] and not got.loss_mask[0]
    assert tokenizer.decode(np.asarray(got.ids[1:-1])) == tokenizer.decode(want.ids[1:-1])


def test_second_prepare_is_a_cache_hit_and_changes_make_a_new_key(tmp_path, tokenizer):
    path = tmp_path / "c.txt"
    path.write_text(TEXT, encoding="utf-8")
    root = tmp_path / "cache"
    first = cache.prepare(path, _opts(split_on="\\n"), tokenizer, root=root)
    again = cache.prepare(path, _opts(split_on="\\n"), tokenizer, root=root)
    assert again.cached and again.key == first.key
    _same(first.docs, again.docs)
    assert cache.prepare(path, _opts(split_on="\\n\\n"), tokenizer, root=root).key != first.key
    path.write_text(TEXT + "one more line\n", encoding="utf-8")
    assert cache.prepare(path, _opts(split_on="\\n"), tokenizer, root=root).key != first.key
    assert not any(p.name.startswith(".tmp") for p in root.iterdir())


def test_structured_formats_go_through_the_cache_too(tmp_path, tokenizer):
    path = tmp_path / "q.jsonl"
    path.write_text('{"a": "ada", "q": "engines"}\n{"a": "bob", "q": "dogs run"}\n',
                    encoding="utf-8")
    opts = _opts(template="{a}: {q}")
    _same(cache.prepare(path, opts, tokenizer, root=tmp_path / "cache").docs,
          _in_memory(path, opts, tokenizer))


@pytest.mark.faults
def test_undecodable_bytes_name_the_line_and_leave_no_cache(tmp_path, tokenizer, monkeypatch):
    path = tmp_path / "bad.txt"
    path.write_bytes(b"fine line\n" * 30 + b"bad \xff byte\n")
    monkeypatch.setattr(cache, "READ_BLOCK", 64)
    root = tmp_path / "cache"
    with pytest.raises(UserError, match=r"line 31.*utf-8") as e:
        cache.prepare(path, _opts(split_on="\\n"), tokenizer, root=root)
    assert "--encoding" in e.value.hint
    assert not list(root.iterdir())


@pytest.mark.faults
def test_whitespace_only_text_is_an_empty_file_error(tmp_path, tokenizer):
    path = tmp_path / "blank.txt"
    path.write_text(" \n\n  \n", encoding="utf-8")
    for opts in (_opts(), _opts(split_on="\\n")):
        with pytest.raises(UserError, match="is empty"):
            cache.prepare(path, opts, tokenizer, root=tmp_path / "cache")


def test_subset_views_select_documents_without_copying(tmp_path, tokenizer):
    path = tmp_path / "c.txt"
    path.write_text(TEXT, encoding="utf-8")
    docs = cache.prepare(path, _opts(split_on="\\n"), tokenizer, root=tmp_path / "c").docs
    view = docs.subset(np.array([2, 0]))
    assert view.ids is docs.ids and len(view) == 2
    assert view.n_tokens == docs.lengths[2] + docs.lengths[0]
    assert list(view.starts) == [docs.starts[2], docs.starts[0]]
