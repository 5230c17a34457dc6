"""Generation from run folders (the trained model stops on its own, prompts x n samples,
stop strings, seeds, JSON output) and merging a LoRA run into a standalone model."""

from __future__ import annotations

import json

import pytest
import torch

import lmtune
from lmtune.cli import main
from lmtune.models.generate import encode_prompt

GEN = dict(max_new_tokens=40, seed=0)


def test_trained_model_ends_its_samples_with_eos(full_run, tiny_gpt2):
    samples = lmtune.generate(full_run.out, n=20, **GEN)
    assert len(samples) == 20
    stopped = [s for s in samples if s.finish_reason == "stop"]
    assert len(stopped) >= 18, [s.text for s in samples]
    assert all(s.new_tokens < 40 for s in stopped)
    assert sum("sat on the" in s.text for s in samples) >= 10  # it learned the lines
    # The untrained base rarely stops within the limit, so the check above can fail.
    base = lmtune.generate(tiny_gpt2, n=20, **GEN)
    assert sum(s.finish_reason == "stop" for s in base) < 10


def test_n_samples_for_each_prompt_in_prompt_order(full_run):
    prompts = ["the cat", "the dog", "a bird"]
    samples = lmtune.generate(full_run.out, prompts, n=3, max_new_tokens=12, seed=1)
    assert [s.prompt for s in samples] == [p for p in prompts for _ in range(3)]
    for s in samples:
        assert s.finish_reason in ("stop", "length") and 0 <= s.new_tokens <= 12
        assert not s.text.startswith(s.prompt)  # the continuation only
    unconditional = lmtune.generate(full_run.out, n=2, max_new_tokens=5, seed=1)
    assert [s.prompt for s in unconditional] == ["", ""]


def test_stop_string_cuts_the_text(full_run):
    model = lmtune.load(full_run.out)
    plain = lmtune.generate(model, ["the cat"], n=6, **GEN)
    cut = lmtune.generate(model, ["the cat"], n=6, stop=[" on"], **GEN)
    assert sum(" on" in s.text for s in plain) >= 3
    for p, c in zip(plain, cut):
        assert " on" not in c.text
        assert c.text == p.text.split(" on")[0]
        if " on" in p.text:
            assert c.finish_reason == "stop"


def test_seed_makes_samples_reproducible(full_run):
    model = lmtune.load(full_run.out)
    opts = dict(n=6, max_new_tokens=20, temperature=1.5, top_k=0, top_p=1.0)
    a = lmtune.generate(model, "the", seed=3, **opts)
    b = lmtune.generate(model, "the", seed=3, **opts)
    c = lmtune.generate(model, "the", seed=4, **opts)
    assert [s.text for s in a] == [s.text for s in b]
    assert [s.text for s in a] != [s.text for s in c]


@pytest.mark.parametrize("which", ["full_run", "tiny_llama"])
def test_left_padded_batch_gives_the_same_greedy_text_as_each_prompt_alone(which, request):
    source = request.getfixturevalue(which)
    model = lmtune.load(getattr(source, "out", source))
    prompts = ["the", "the cat sat on the mat and the dog"]  # very different lengths
    opts = dict(temperature=0, max_new_tokens=12, precision="fp32")
    batched = lmtune.generate(model, prompts, **opts)
    alone = [lmtune.generate(model, [p], **opts)[0] for p in prompts]
    assert [s.text for s in batched] == [s.text for s in alone]
    assert [s.new_tokens for s in batched] == [s.new_tokens for s in alone]


def test_llama_prompts_start_with_bos(tiny_llama):
    model, tokenizer = lmtune.load(tiny_llama)
    assert encode_prompt(tokenizer, "the cat")[0] == tokenizer.bos_token_id
    samples = lmtune.generate((model, tokenizer), ["the cat", "a dog"], n=2,
                              max_new_tokens=6, seed=0)
    assert len(samples) == 4 and all(s.new_tokens <= 6 for s in samples)


def test_cli_json_prints_one_object_per_sample(full_run, capsys):
    code = main(["generate", str(full_run.out), "--prompt", "the cat", "--prompt", "the dog",
                 "-n", "2", "--max-new-tokens", "10", "--seed", "5", "--json",
                 "--precision", "fp32"])
    out = capsys.readouterr().out
    assert code == 0
    records = [json.loads(line) for line in out.splitlines()]
    assert len(records) == 4
    assert [r["prompt"] for r in records] == ["the cat", "the cat", "the dog", "the dog"]
    for r in records:
        assert set(r) == {"prompt", "text", "finish_reason", "new_tokens"}
    # The CLI and the API give the same samples for the same seed.
    api = lmtune.generate(full_run.out, ["the cat", "the dog"], n=2, max_new_tokens=10,
                          seed=5, precision="fp32")
    assert [r["text"] for r in records] == [s.text for s in api]


def test_cli_plain_text_output(full_run, capsys):
    assert main(["generate", str(full_run.out), "--prompt", "the cat", "-n", "2",
                 "--max-new-tokens", "8", "--seed", "0"]) == 0
    captured = capsys.readouterr()
    blocks = captured.out.split("-" * 40 + "\n")
    assert len(blocks) == 2 and all(b.startswith("the cat") for b in blocks)
    assert "error" not in captured.err


def test_cli_stop_flag_cuts_every_sample(full_run, capsys):
    assert main(["generate", str(full_run.out), "--prompt", "the cat", "-n", "6", "--json",
                 "--max-new-tokens", "40", "--seed", "0", "--stop", " on", "--stop", "mat"]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(records) == 6
    assert not any(" on" in r["text"] or "mat" in r["text"] for r in records)
    assert sum(r["finish_reason"] == "stop" for r in records) >= 5


def test_chat_without_template_is_a_clean_error(tiny_gpt2, capsys):
    with pytest.raises(lmtune.UserError, match="no chat template"):
        lmtune.generate(tiny_gpt2, "hi", chat=True, max_new_tokens=2)
    assert main(["generate", str(tiny_gpt2), "--chat", "--prompt", "hi"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --chat: this model's tokenizer has no chat template\n")
    assert "Traceback" not in err and len(err.splitlines()) == 2


# --- merge ---------------------------------------------------------------------------------------

def _logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=torch.tensor([[0, 5, 17, 42, 99, 7, 3]])).logits
