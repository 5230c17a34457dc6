"""GGUF export (export/gguf.py), checked through an independent reader: transformers' own
GGUF loader, which undoes llama.cpp's layout (GPT-2's transposed Conv1D weights, Llama's
rotary permutation) the way llama.cpp's converter writes it."""

from __future__ import annotations

import pytest
import torch

import lmtune
from cli_helpers import assert_clean_error, run_cli
from lmtune.errors import UserError
from lmtune.models.load import load


def _from_gguf(path):
    from gguf import GGUFReader
    from transformers import AutoModelForCausalLM, AutoTokenizer

    fields = GGUFReader(path).fields
    # transformers maps gpt2.context_length to n_ctx only, leaving n_positions at 1024;
    # llama.cpp reads context_length itself.
    extra = ({"n_positions": int(fields["gpt2.context_length"].contents())}
             if "gpt2.context_length" in fields else {})
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name,
                                                 **extra).eval()
    return model, AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)


def _greedy(model, ids, n=32):
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                             pad_token_id=0)
    return out[0, ids.shape[1]:].tolist()


PROMPT = torch.tensor([[0, 5, 17, 42, 99, 7]])


@pytest.mark.parametrize("fixture", ["tiny_gpt2", "tiny_llama"])
def test_f32_export_reads_back_with_the_same_logits_and_tokens(fixture, request, tmp_path):
    folder = request.getfixturevalue(fixture)
    result = lmtune.export(folder, tmp_path / "m.gguf", type="f32")
    assert result.out.is_file() and result.type == "f32"
    original, tok, _ = load(str(folder))
    exported, gguf_tok = _from_gguf(result.out)
    with torch.no_grad():
        torch.testing.assert_close(exported(PROMPT).logits, original(PROMPT).logits,
                                   rtol=1e-4, atol=1e-4)
    text = "the cat sat on the mat and a dog ran"
    assert gguf_tok(text, add_special_tokens=False)["input_ids"] == \
        tok(text, add_special_tokens=False)["input_ids"]


def test_a_lora_run_is_merged_and_q8_0_keeps_greedy_generation(lora_run, tmp_path):
    merged, _, _ = load(str(lora_run.out), merge=True)
    f16 = lmtune.export(lora_run.out, tmp_path / "f16.gguf", type="f16").out
    q8 = lmtune.export(lora_run.out, tmp_path / "q8.gguf", type="q8_0").out
    assert q8.stat().st_size < f16.stat().st_size
    want = _greedy(merged, PROMPT)
    assert _greedy(_from_gguf(f16)[0], PROMPT) == want
    assert sum(a == b for a, b in zip(_greedy(_from_gguf(q8)[0], PROMPT), want)) >= 28


def test_the_file_names_the_tokenizer_llama_cpp_needs(full_run, tmp_path):
    import shutil

    from gguf import GGUFReader

    model = shutil.copytree(full_run.out / "final", tmp_path / "model")
    (model / "README.md").write_text("---\nlicense: apache-2.0\nlanguage: en\n---\n# Card\n")
    path = lmtune.export(model, tmp_path / "m.gguf", type="f16").out
    fields = GGUFReader(path).fields
    value = lambda key: fields[key].contents()  # noqa: E731
    assert value("general.license") == "apache-2.0"  # from the model card, when there is one
    assert value("general.architecture") == "gpt2"
    assert value("tokenizer.ggml.model") == "gpt2" and value("tokenizer.ggml.pre") == "gpt-2"
    assert value("tokenizer.ggml.add_bos_token") is True  # lmtune trained with it first
    assert value("tokenizer.ggml.eos_token_id") == value("tokenizer.ggml.bos_token_id") == 0
    assert value("general.tool").startswith("lmtune ")
    assert len(value("tokenizer.ggml.tokens")) == len(value("tokenizer.ggml.token_type"))


def test_bad_exports_are_one_clean_error_and_write_nothing(tiny_gpt2, tmp_path, capsys):
    existing = tmp_path / "taken.gguf"
    existing.write_bytes(b"keep")
    code, out, err = run_cli(capsys, ["export", tiny_gpt2, "--out", existing])
    assert_clean_error(code, out, err, "already exists")
    assert existing.read_bytes() == b"keep"
    code, out, err = run_cli(capsys, ["export", tiny_gpt2, "--out", tmp_path / "no" / "m.gguf"])
    assert_clean_error(code, out, err, "does not exist")
    with pytest.raises(UserError, match="not one lmtune writes"):
        lmtune.export(tiny_gpt2, tmp_path / "m.gguf", type="q3_k")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken.gguf"]


def test_an_architecture_it_cannot_write_is_refused(tiny_gpt2, tmp_path):
    from transformers import AutoTokenizer, GPTNeoConfig, GPTNeoForCausalLM

    tok = AutoTokenizer.from_pretrained(tiny_gpt2)
    neo = GPTNeoForCausalLM(GPTNeoConfig(num_layers=2, hidden_size=64, num_heads=2,
                                         attention_types=[[["global", "local"], 1]],
                                         vocab_size=len(tok), max_position_embeddings=128))
    folder = tmp_path / "neo"
    neo.save_pretrained(folder)
    tok.save_pretrained(folder)
    with pytest.raises(UserError, match="GPT-2 and Llama-family models, not gpt_neo"):
        lmtune.export(folder, tmp_path / "neo.gguf")
    assert not (tmp_path / "neo.gguf").exists()


def test_the_cli_exports_and_says_what_it_wrote(full_run, tmp_path, capsys):
    code, out, err = run_cli(capsys, ["export", full_run.out, "--out", tmp_path / "m.gguf",
                                      "--type", "q8_0"])
    assert code == 0, err
    assert out.startswith(f"wrote {tmp_path / 'm.gguf'} (gpt2, q8_0, ")


def _mean_loss(model, ids):
    with torch.no_grad():
        return model(ids, labels=ids).loss.item()


def test_q4_0_keeps_the_loss_within_ten_percent(full_run, tmp_path):
    model, tok, _ = load(str(full_run.out))
    text = "the cat sat on the mat\nthe dog sat on the park\nthe bird sat on the mat\n"
    ids = torch.tensor([[0] + tok(text, add_special_tokens=False)["input_ids"]])
    q4 = lmtune.export(full_run.out, tmp_path / "q4.gguf", type="q4_0").out
    want, got = _mean_loss(model, ids), _mean_loss(_from_gguf(q4)[0], ids)
    assert abs(got - want) / want < 0.10


def test_an_ollama_folder_reproduces_the_training_format(tiny_gpt2, tmp_path, capsys):
    data = tmp_path / "jokes.jsonl"
    data.write_text("\n".join('{"joke": "the cat sat on the mat %d"}' % i for i in range(40)))
    run = lmtune.train(data, model=str(tiny_gpt2), template="Joke: {joke}", method="lora",
                       max_steps=2, block_size=64, precision="fp32", sample_every=0,
                       out=str(tmp_path / "run"))
    code, out, err = run_cli(capsys, ["export", run.out, "--format", "ollama", "--out",
                                      tmp_path / "ollama", "--type", "q8_0"])
    assert code == 0, err
    text = (tmp_path / "ollama" / "Modelfile").read_text()
    assert text.splitlines() == ["FROM ./model.gguf", 'TEMPLATE """Joke: {{ .Prompt }}"""',
                                 'PARAMETER stop "<|endoftext|>"', "PARAMETER num_ctx 64"]
    assert (tmp_path / "ollama" / "model.gguf").is_file()
    assert "ollama create NAME -f Modelfile" in out


@pytest.mark.parametrize("info, template", [
    ({}, "{{ .Prompt }}"),
    ({"template": 'Quote by {author}: "{text}"'}, "Quote by {{ .Prompt }}"),
    ({"prompt_template": "Q: {q}\nA:", "completion_template": " {a}"}, "Q: {{ .Prompt }}\nA:"),
    ({"template": "{{literal}} {text}"}, "{literal} {{ .Prompt }}"),
    ({"template": "{{{{x}}}} {text}"}, '{{ "{{" }}x}} {{ .Prompt }}'),  # Go's action braces
])
def test_the_modelfile_template_follows_the_run(info, template):
    from lmtune.deploy.ollama import prompt_template

    assert prompt_template(info) == template


def test_gguf_lora_refuses_what_it_cannot_hold(full_run, lora_run, tmp_path, capsys):
    code, out, err = run_cli(capsys, ["export", full_run.out, "--format", "gguf-lora",
                                      "--out", tmp_path / "a.gguf", "--type", "f32"])
    assert_clean_error(code, out, err, "holds a full model, not a LoRA adapter")
    with pytest.raises(UserError, match="supports the Llama family, not gpt2"):
        lmtune.export(lora_run.out, tmp_path / "b.gguf", format="gguf-lora", type="f32")
    with pytest.raises(UserError, match="does not fit a LoRA adapter"):
        lmtune.export(lora_run.out, tmp_path / "c.gguf", format="gguf-lora", type="q4_0")
    assert list(tmp_path.iterdir()) == []
