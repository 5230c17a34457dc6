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
# Set before torch is imported: tiny models run fastest on one thread, and on a 2-core box
# shared with another process, torch's default thread pool made a LoRA step 25x slower.
os.environ.setdefault("OMP_NUM_THREADS", "1")

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


def sentencepiece_tokenizer():
    """A tokenizer of the Llama 2 / TinyLlama kind, as transformers converts SentencePiece:
    BPE with byte fallback (<0x00>..<0xFF> pieces), "▁" for spaces and before the text."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    learner = Tokenizer(models.BPE())
    learner.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="first", split=True)
    learner.train_from_iterator([" ".join(CORPUS_WORDS)] * 20,
                                trainers.BpeTrainer(vocab_size=300, show_progress=False))
    learned = json.loads(learner.to_str())["model"]
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2} | {f"<0x{b:02X}>": 3 + b for b in range(256)}
    for piece, _ in sorted(learned["vocab"].items(), key=lambda kv: kv[1]):
        vocab.setdefault(piece, len(vocab))
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in learned["merges"]]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True,
                               fuse_unk=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("\u2581"),
                                           normalizers.Replace(" ", "\u2581")])
    tok.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(),
                                     decoders.Fuse(), decoders.Strip(" ", 1, 0)])
    tok.add_special_tokens(["<unk>", "<s>", "</s>"])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>")


def llama3_tokenizer():
    """Byte-level BPE with Llama 3's pre-tokenizer (its regex split, digits in threes) and
    its ignore_merges."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from lmtune.deploy.gguf import LLAMA3_SPLIT

    tok = Tokenizer(models.BPE(ignore_merges=True))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, show_progress=False,
                                  special_tokens=["<|begin_of_text|>", "<|end_of_text|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([" ".join(CORPUS_WORDS) + " 2024 12345"] * 20, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|begin_of_text|>",
                                   eos_token="<|end_of_text|>")


def llama_folder(folder: Path, tokenizer, **config) -> Path:
    """A 2-layer Llama with random weights around `tokenizer`, saved in `folder`."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(num_hidden_layers=2, hidden_size=64, num_attention_heads=4,
                      num_key_value_heads=2, intermediate_size=128, max_position_embeddings=256,
                      vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                      eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=False, **config)
    return _save(LlamaForCausalLM(cfg), tokenizer, folder)


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
    return llama_folder(tmp_path_factory.mktemp("tiny-llama"), _tokenizer(bos="<s>"))


def write_lines(path: Path) -> Path:
    """120 short, learnable lines (six distinct ones); read with split_on="\\n"."""
    import random
    rng = random.Random(0)
    lines = [f"the {a} sat on the {b}" for a in ("cat", "dog", "bird") for b in ("mat", "park")]
    path.write_text("\n".join(rng.choice(lines) for _ in range(120)) + "\n", encoding="utf-8")
    return path


@pytest.fixture
def lines_file(tmp_path) -> Path:
    """Short, learnable, EOS-terminated examples: one per line."""
    return write_lines(tmp_path / "lines.txt")


@pytest.fixture(scope="session")
def session_lines(tmp_path_factory) -> Path:
    """The same lines, for session-scoped runs that several test files share."""
    return write_lines(tmp_path_factory.mktemp("data") / "lines.txt")


# Options every short test run shares: the lines data, small blocks, exact fp32 on the CPU.
FAST = dict(split_on="\n", block_size=64, precision="fp32", device="cpu", seed=0)


@pytest.fixture
def fast() -> dict:
    return dict(FAST)



@pytest.fixture(scope="session")
def full_run(tiny_gpt2, session_lines, tmp_path_factory):
    """Full fine-tuning until the model has learned the lines and ends them with EOS."""
    import lmtune
    return lmtune.train(session_lines, model=str(tiny_gpt2), out=str(
        tmp_path_factory.mktemp("runs") / "full"), method="full", max_steps=40, lr=3e-3,
        log_every=5, eval_every=10, sample_every=20, sample_max_new_tokens=16, **FAST)


@pytest.fixture(scope="session")
def lora_run(tiny_gpt2, session_lines, tmp_path_factory):
    """A LoRA run with a learning rate high enough that the adapter is far from zero."""
    import lmtune
    return lmtune.train(session_lines, model=str(tiny_gpt2), out=str(
        tmp_path_factory.mktemp("runs") / "lora"), method="lora", max_steps=12, lr=2e-2,
        log_every=4, eval_every=6, sample_every=6, sample_max_new_tokens=8, **FAST)


@pytest.fixture
def quotes_file(tmp_path) -> Path:
    rows = [{"author": a, "text": t} for a, t in [
        ("ada", "engines weave patterns"), ("ada", "the cat sat on the mat"),
        ("bob", "a dog ran in the park"), ("bob", "birds sang in the park")] * 10]
    path = tmp_path / "quotes.json"
    path.write_text(json.dumps(rows), encoding="utf-8")
    return path


@pytest.fixture(autouse=True, scope="session")
def _token_cache_in_tmp(tmp_path_factory):
    """Tokenized corpora go to a per-session folder, not the user's cache."""
    from lmtune.data import cache

    original = cache.cache_root
    folder = tmp_path_factory.mktemp("token-cache")
    cache.cache_root = lambda: folder
    yield folder
    cache.cache_root = original
