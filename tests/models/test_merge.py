"""`lmtune merge`: a LoRA run folded into a standalone model with the adapter's logits."""

from __future__ import annotations

import json

import torch

import lmtune
from lmtune.cli import main


def _logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=torch.tensor([[0, 5, 17, 42, 99, 7, 3]])).logits


def test_merge_gives_a_standalone_model_with_the_adapter_logits(lora_run, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    result = lmtune.merge(lora_run.out, tmp_path / "merged")
    assert result.max_logit_diff < 1e-3
    assert not (result.out / "adapter_config.json").exists()
    info = json.loads((result.out / "lmtune.json").read_text())
    assert info["method"] == "merged"
    merged = AutoModelForCausalLM.from_pretrained(result.out).eval()
    base = AutoModelForCausalLM.from_pretrained(info["base_model"]).eval()
    base_logits = _logits(base)
    adapter = PeftModel.from_pretrained(base, lora_run.final).eval()
    assert (_logits(adapter) - base_logits).abs().max() > 1e-3  # the adapter is not a no-op
    torch.testing.assert_close(_logits(merged), _logits(adapter), atol=1e-4, rtol=0)
    # The merged folder is itself a model lmtune can load and sample from.
    assert len(lmtune.generate(result.out, "the", n=2, max_new_tokens=4, seed=0)) == 2


def test_merge_cli_and_its_refusals(lora_run, full_run, tmp_path, capsys):
    out = tmp_path / "merged"
    assert main(["merge", str(lora_run.out), "--out", str(out)]) == 0
    assert "merged model:" in capsys.readouterr().out
    assert main(["merge", str(lora_run.out), "--out", str(out)]) == 2  # not empty now
    assert "already exists" in capsys.readouterr().err
    assert main(["merge", str(full_run.out), "--out", str(tmp_path / "m2")]) == 2
    assert "not a LoRA adapter" in capsys.readouterr().err
    assert not (tmp_path / "m2").exists()
