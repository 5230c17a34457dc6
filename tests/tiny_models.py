"""Tiny models and tokenizers built in the test session (random weights, tokenizers trained
here on a few words), saved as ordinary model folders so every code path (resolve, load,
train, save) runs as it does for a real model. conftest.py makes fixtures of them; tests that
need another kind import the builders."""

from __future__ import annotations

import json
import random
from pathlib import Path

CORPUS_WORDS = ("the cat sat on the mat and a dog ran in the park while birds sang "
                "quote by ada lovelace engines weave patterns question answer two plus four "
                "why did the programmer quit because he did not get arrays").split()


def chinese_corpus(path: Path, lines: int = 400) -> Path:
    """Lines of 'words' made of 60 CJK characters (U+4E00...), built here, with some ASCII."""
    rng = random.Random(0)
    chars = [chr(0x4E00 + 37 * k) for k in range(60)]
    words = ["".join(rng.choice(chars) for _ in range(rng.randint(1, 3))) for _ in range(150)]
    text = "\n".join("".join(rng.choice(words) for _ in range(rng.randint(5, 20)))
                     + rng.choice(["。", "，好的", " ok 2024"]) for _ in range(lines))
    path.write_text(text + "\n", encoding="utf-8")
    return path


def byte_level_tokenizer(bos: str | None):
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

    from lmtune.deploy.gguf_vocab import LLAMA3_SPLIT

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
                      eos_token_id=tokenizer.eos_token_id,
                      **{"tie_word_embeddings": False, **config})
    return save_folder(LlamaForCausalLM(cfg), tokenizer, folder)


def save_folder(model, tokenizer, folder: Path) -> Path:
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return folder
