"""Session fixtures: a 2-layer GPT-2 and a 2-layer Llama with random weights and a byte-level
BPE tokenizer trained here (tiny_models.py), runs trained on them, and the data they use."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from tiny_models import byte_level_tokenizer, llama_folder, save_folder

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Set before torch is imported: tiny models run fastest on one thread, and on a 2-core box
# shared with another process, torch's default thread pool made a LoRA step 25x slower.
os.environ.setdefault("OMP_NUM_THREADS", "1")

@pytest.fixture(scope="session")
def tiny_gpt2(tmp_path_factory) -> Path:
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    tok = byte_level_tokenizer(bos=None)
    cfg = GPT2Config(n_layer=2, n_embd=64, n_head=2, n_positions=256, vocab_size=len(tok),
                     bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id)
    return save_folder(GPT2LMHeadModel(cfg), tok, tmp_path_factory.mktemp("tiny-gpt2"))


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> Path:
    return llama_folder(tmp_path_factory.mktemp("tiny-llama"), byte_level_tokenizer(bos="<s>"))


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
