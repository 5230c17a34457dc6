import numpy as np
import pytest
from transformers import PreTrainedTokenizerFast

from lmtune.data import Example, start_token_id, tokenize_examples
from lmtune.errors import UserError

EXAMPLES = [Example("", "The quick brown fox."), Example("Question: two plus two?", " Answer: four."),
            Example("", "Hello world")]


def encode(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"] if text else []


def test_documents_are_start_prompt_completion_eos(tokenizer):
    docs = tokenize_examples(EXAMPLES, tokenizer)
    assert len(docs) == 3
    assert docs.ids.dtype == np.uint32 and docs.loss_mask.dtype == bool and docs.offsets.dtype == np.int64
    assert docs.n_tokens == len(docs.ids) == len(docs.loss_mask) == docs.offsets[-1]
    for i, ex in enumerate(EXAMPLES):
        doc = docs.ids[docs.offsets[i]:docs.offsets[i + 1]].tolist()
        prompt, completion = encode(tokenizer, ex.prompt), encode(tokenizer, ex.completion)
        assert doc == [tokenizer.bos_token_id] + prompt + completion + [tokenizer.eos_token_id]
        assert tokenizer.decode(doc[1 + len(prompt):-1]) == ex.completion


def test_loss_mask_covers_completion_and_eos_only(tokenizer):
    docs = tokenize_examples(EXAMPLES, tokenizer)
    for i, ex in enumerate(EXAMPLES):
        mask = docs.loss_mask[docs.offsets[i]:docs.offsets[i + 1]].tolist()
        n_prompt, n_completion = len(encode(tokenizer, ex.prompt)), len(encode(tokenizer, ex.completion))
        assert mask == [False] * (1 + n_prompt) + [True] * (n_completion + 1)


def test_without_bos_documents_start_with_eos_and_eos_still_counts(tokenizer_no_bos):
    tok = tokenizer_no_bos
    assert tok.pad_token_id == tok.eos_token_id  # the GPT-2 trap: masking pad by id would mask EOS
    assert start_token_id(tok) == tok.eos_token_id
    docs = tokenize_examples(EXAMPLES, tok)
    starts, ends = docs.offsets[:-1], docs.offsets[1:] - 1
    assert (docs.ids[starts] == tok.eos_token_id).all() and not docs.loss_mask[starts].any()
    assert (docs.ids[ends] == tok.eos_token_id).all() and docs.loss_mask[ends].all()


def test_start_token_prefers_bos(tokenizer):
    assert start_token_id(tokenizer) == tokenizer.bos_token_id != tokenizer.eos_token_id


def test_tokenizer_without_eos_is_a_user_error(bpe):
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe)
    with pytest.raises(UserError, match="no end-of-text"):
        tokenize_examples(EXAMPLES, tok)


class CountingTokenizer:
    """Wraps a tokenizer and records the size of every call."""

    def __init__(self, tok):
        self.tok, self.calls = tok, []
        self.bos_token_id, self.eos_token_id = tok.bos_token_id, tok.eos_token_id

    def __call__(self, texts, **kwargs):
        assert isinstance(texts, list)
        self.calls.append(len(texts))
        return self.tok(texts, **kwargs)


def test_tokenizes_in_batches_not_per_example(tokenizer):
    examples = [Example("", f"text {i}") for i in range(25)] + [Example("prompt", f"answer {i}") for i in range(5)]
    spy = CountingTokenizer(tokenizer)
    docs = tokenize_examples(examples, spy, batch_size=10)
    assert spy.calls == [10, 10, 10, 5]  # 30 completions in 3 calls, then the 5 prompts in 1
    assert docs.ids.tolist() == tokenize_examples(examples, tokenizer).ids.tolist()


def test_fast_batch_encoding_gives_the_tokenizer_call_ids(tokenizer):
    from lmtune.data.tokenize import encode_batch

    texts = ["Quote by Ada Lovelace: \"The engine weaves\"", "", "  two  spaces\n\nand lines"]
    want = tokenizer(texts, add_special_tokens=False)["input_ids"]
    assert encode_batch(tokenizer, texts) == want
