"""Tiny models built in the test session: a 2-layer GPT-2 and a 2-layer Llama with random
weights and a byte-level BPE tokenizer trained here, saved as ordinary model folders so every
code path (resolve, load, train, save) runs as it does for a real model."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

CORPUS_WORDS = ("the cat sat on the mat and a dog ran in the park while birds sang "
                "quote by ada lovelace engines weave patterns question answer two plus four "
                "why did the programmer quit because he did not get arrays").split()


def _tokenizer(bos: str | None):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>", "<s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([" ".join(CORPUS_WORDS)] * 20, trainer)
    kwargs = {"eos_token": "<|endoftext|>"}
    if bos:
        kwargs["bos_token"] = bos
    return PreTrainedTokenizerFast(tokenizer_object=tok, **kwargs)


def _save(model, tokenizer, folder: Path) -> Path:
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_gpt2(tmp_path_factory) -> Path:
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    tok = _tokenizer(bos=None)
    cfg = GPT2Config(n_layer=2, n_embd=64, n_head=2, n_positions=256, vocab_size=len(tok),
                     bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id)
    return _save(GPT2LMHeadModel(cfg), tok, tmp_path_factory.mktemp("tiny-gpt2"))


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    tok = _tokenizer(bos="<s>")
    cfg = LlamaConfig(num_hidden_layers=2, hidden_size=64, num_attention_heads=4,
                      num_key_value_heads=2, intermediate_size=128, max_position_embeddings=256,
                      vocab_size=len(tok), bos_token_id=tok.bos_token_id,
                      eos_token_id=tok.eos_token_id, tie_word_embeddings=False)
    return _save(LlamaForCausalLM(cfg), tok, tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture
def lines_file(tmp_path) -> Path:
    """Short, learnable, EOS-terminated examples: one per line."""
    import random
    rng = random.Random(0)
    lines = [f"the {a} sat on the {b}" for a in ("cat", "dog", "bird") for b in ("mat", "park")]
    path = tmp_path / "lines.txt"
    path.write_text("\n".join(rng.choice(lines) for _ in range(120)) + "\n", encoding="utf-8")
    return path


@pytest.fixture
def quotes_file(tmp_path) -> Path:
    rows = [{"author": a, "text": t} for a, t in [
        ("ada", "engines weave patterns"), ("ada", "the cat sat on the mat"),
        ("bob", "a dog ran in the park"), ("bob", "birds sang in the park")] * 10]
    path = tmp_path / "quotes.json"
    path.write_text(json.dumps(rows), encoding="utf-8")
    return path
