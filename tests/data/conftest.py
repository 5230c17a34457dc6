"""A tiny real fast tokenizer, trained in a few milliseconds: no downloads in data tests."""

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Quote by Ada Lovelace: \"The engine weaves algebraic patterns.\"",
    "Question: what is two plus two?\nAnswer: four.",
    "Hello world, this is lmtune fine-tuning a tiny model on its own text.",
]


@pytest.fixture(scope="session")
def bpe():
    # Byte-level, like GPT-2: every string, accents included, has a tokenization.
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>", "<s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(SENTENCES * 5, trainer)
    return tok


@pytest.fixture
def tokenizer(bpe):
    """Llama-style: a BOS token distinct from EOS."""
    return PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|endoftext|>", bos_token="<s>")


@pytest.fixture
def tokenizer_no_bos(bpe):
    """GPT-2-style: no BOS, so documents start with EOS; its pad token is often EOS too."""
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|endoftext|>")
    tok.pad_token = tok.eos_token
    return tok
