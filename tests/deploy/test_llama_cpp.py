"""llama.cpp itself reads the exported files (llama-cpp-python, built once per machine by
`.ci/run`; see the README): the same greedy tokens as lmtune's own generation, and a run
trained to end its lines stops on its own there too."""

from __future__ import annotations

import pytest
import torch

import lmtune
from tiny_models import llama3_tokenizer, llama_folder, sentencepiece_tokenizer
from lmtune.errors import UserError
from lmtune.models.generate import encode_prompt
from lmtune.models.load import load


def _llama_cpp(path, n_ctx: int = 128):
    from llama_cpp import Llama  # a test dependency: .ci/run builds it once and caches it

    return Llama(model_path=str(path), n_ctx=n_ctx, n_threads=1, verbose=False, seed=0)


def _greedy_cpp(llm, ids: list[int], n: int) -> list[int]:
    out = []
    for token in llm.generate(ids, top_k=1, top_p=1.0, temp=0.0, repeat_penalty=1.0,
                              reset=True):
        if token == llm.token_eos() or len(out) == n:
            break
        out.append(token)
    return out


def _greedy_lmtune(model, ids: list[int], eos: int, n: int) -> list[int]:
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), max_new_tokens=n, do_sample=False,
                             eos_token_id=eos, pad_token_id=eos)[0, len(ids):].tolist()
    return out[:out.index(eos)] if eos in out else out


def test_llama_cpp_generates_the_runs_tokens_and_stops(full_run, tmp_path):
    path = lmtune.export(full_run.out, tmp_path / "run.gguf", type="f16").out
    model, tok, _ = load(str(full_run.out))
    ids = encode_prompt(tok, "the cat")
    llm = _llama_cpp(path)
    assert llm.tokenize(b"the cat", add_bos=True, special=False) == ids
    want = _greedy_lmtune(model, ids, tok.eos_token_id, 32)
    got = _greedy_cpp(llm, ids, 32)
    assert got == want
    assert len(got) < 32  # ended on the end token, as the run learned


def test_llama_cpp_runs_the_default_model_exported_to_q8_0(tmp_path):
    path = lmtune.export("smollm2-135m", tmp_path / "smollm2.gguf", type="q8_0").out
    model, tok, _ = load("smollm2-135m")
    ids = encode_prompt(tok, "The capital of France is")
    llm = _llama_cpp(path)
    assert llm.tokenize("The capital of France is".encode(), add_bos=True) == ids
    want = _greedy_lmtune(model, ids, tok.eos_token_id, 32)
    got = _greedy_cpp(llm, ids, 32)
    n = min(32, len(want))
    assert n >= 8 and sum(a == b for a, b in zip(got, want)) >= 28 * n / 32


def test_a_gguf_lora_over_the_base_generates_what_the_merged_run_does(tiny_llama, tmp_path):
    data = tmp_path / "lines.txt"
    data.write_text("\n".join(["the cat sat on the mat", "a dog ran in the park"] * 30))
    run = lmtune.train(data, model=str(tiny_llama), method="lora", split_on="\n",
                       max_steps=30, lr=3e-2, block_size=64, precision="fp32",
                       sample_every=0, out=str(tmp_path / "run"))
    base = lmtune.export(tiny_llama, tmp_path / "base.gguf", type="f32").out
    lora = lmtune.export(run.out, tmp_path / "lora.gguf", format="gguf-lora").out
    merged, tok, _ = load(str(run.out), merge=True)
    plain, _, _ = load(str(tiny_llama))
    ids = encode_prompt(tok, "the cat")
    want = _greedy_lmtune(merged, ids, tok.eos_token_id, 16)
    assert want != _greedy_lmtune(plain, ids, tok.eos_token_id, 16)  # the adapter matters
    from llama_cpp import Llama

    llm = Llama(model_path=str(base), lora_path=str(lora), n_ctx=128, n_threads=1,
                verbose=False, seed=0)
    assert _greedy_cpp(llm, ids, 16) == want


LLAMA3_ROPE = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 16}
TEXTS = ["the cat sat on the mat", "  two  spaces and a\nnew line", "café ☃ naïve 12345",
         "WHY DID THE PROGRAMMER QUIT? because he didn't get arrays"]


@pytest.mark.parametrize("make_tokenizer", [sentencepiece_tokenizer, llama3_tokenizer])
def test_llama_cpp_reads_other_tokenizers_and_llama3_rope_as_transformers_does(
        make_tokenizer, tmp_path):
    """SentencePiece-style (Llama 2, TinyLlama) and Llama 3 tokenizers split text in
    llama.cpp as in transformers, and Llama 3's rope scaling (here from position 16 on, so
    that a 2-layer model feels it) gives the same logits."""
    folder = llama_folder(tmp_path / "model", make_tokenizer(), rope_scaling=LLAMA3_ROPE)
    path = lmtune.export(folder, tmp_path / "m.gguf", type="f32").out
    model, tok, _ = load(str(folder))
    llm = _llama_cpp(path)
    for text in TEXTS:
        assert llm.tokenize(text.encode(), add_bos=True, special=False) == \
            encode_prompt(tok, text), text
    ids = encode_prompt(tok, " ".join(TEXTS))
    assert len(ids) > 24
    scored = _llama_cpp_logits(path, ids)
    with torch.no_grad():
        want = model(torch.tensor([ids])).logits[0]
    error = (scored - want).abs().max().item()
    unscaled = llama_folder(tmp_path / "unscaled", tok)  # the same weights, no rope scaling
    with torch.no_grad():
        plain = load(str(unscaled))[0](torch.tensor([ids])).logits[0]
    effect = (plain - want).abs().max().item()
    assert error < 1e-3 and effect > 10 * error, (error, effect)  # it sees the scaling


def _llama_cpp_logits(path, ids: list[int]) -> torch.Tensor:
    from llama_cpp import Llama

    llm = Llama(model_path=str(path), n_ctx=128, n_threads=1, verbose=False, logits_all=True)
    llm.eval(ids)
    return torch.tensor(llm.scores[:len(ids)])


def test_a_dynamic_rope_scaling_is_refused(tmp_path):
    folder = llama_folder(tmp_path / "model", sentencepiece_tokenizer(),
                          rope_scaling={"rope_type": "dynamic", "factor": 2.0})
    with pytest.raises(UserError, match="dynamic rope scaling, which a GGUF file cannot hold"):
        lmtune.export(folder, tmp_path / "m.gguf")
    assert not (tmp_path / "m.gguf").exists()
