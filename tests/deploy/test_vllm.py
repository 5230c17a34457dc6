"""`lmtune export --format vllm` (deploy/vllm.py): a folder vLLM accepts, checked as a file
format (vLLM itself needs a GPU): the adapter obeys the rules vLLM's PEFTHelper enforces,
loads with PEFT over the base named in the command and computes what the run computes; a
model vLLM serves no LoRA on becomes a standalone model folder with the same outputs."""

from __future__ import annotations

import json
import shlex

import pytest
import torch

import lmtune
from cli_helpers import assert_clean_error, run_cli
from lmtune.errors import UserError
from lmtune.models.load import load

PROMPT = torch.tensor([[1, 5, 17, 42, 99, 7]])


@pytest.fixture(scope="module")
def llama_lora_run(tiny_llama, tmp_path_factory):
    folder = tmp_path_factory.mktemp("vllm")
    data = folder / "lines.txt"
    data.write_text("\n".join(["the cat sat on the mat", "a dog ran in the park"] * 30))
    return lmtune.train(data, model=str(tiny_llama), method="lora", split_on="\n",
                        max_steps=6, lr=3e-2, block_size=64, precision="fp32", lora_r=32,
                        sample_every=0, report=False, out=str(folder / "run"))


def test_a_llama_lora_run_becomes_an_adapter_vllm_serves_over_its_base(
        llama_lora_run, tiny_llama, tmp_path, capsys):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    out = tmp_path / "adapter"
    code, printed, err = run_cli(capsys, ["export", llama_lora_run.out, "--format", "vllm",
                                          "--out", out])
    assert code == 0, err
    command = next(line for line in printed.splitlines() if line.startswith("serve it: "))
    argv = shlex.split(command.removeprefix("serve it: "))
    assert argv[:3] == ["vllm", "serve", str(tiny_llama.resolve())]
    assert argv[3:] == ["--enable-lora", "--lora-modules", f"adapter={out.resolve()}",
                        "--max-lora-rank", "32"]  # rank 32 is over vLLM's default of 16
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(tiny_llama.resolve())
    assert sorted(p.name for p in out.iterdir()) == ["adapter_config.json",
                                                      "adapter_model.safetensors"]
    base = AutoModelForCausalLM.from_pretrained(argv[2])
    served = PeftModel.from_pretrained(base, out).eval()
    run, _, _ = load(str(llama_lora_run.out))
    with torch.no_grad():
        torch.testing.assert_close(served(PROMPT).logits, run(PROMPT).logits)


def test_a_model_vllm_serves_no_lora_on_is_merged_into_a_model_folder(lora_run, tmp_path,
                                                                      capsys):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "jokes-model"
    code, printed, err = run_cli(capsys, ["export", lora_run.out, "--format", "vllm",
                                          "--out", out, "--type", "f32"])
    assert code == 0, err
    assert "vLLM serves no LoRA adapters on gpt2 models" in printed
    assert f"serve it: vllm serve {out.resolve()} --served-model-name jokes-model " \
           f"--dtype float32" in printed
    merged, _, _ = load(str(lora_run.out), merge=True)
    folder = AutoModelForCausalLM.from_pretrained(out).eval()
    with torch.no_grad():
        torch.testing.assert_close(folder(PROMPT).logits, merged(PROMPT).logits)
    assert (out / "tokenizer.json").is_file() and not list(out.glob("*.bin"))


@pytest.mark.parametrize("change, why", [
    ({"use_dora": True}, "it uses DoRA"),
    ({"modules_to_save": ["lm_head"]}, "trains whole modules besides LoRA"),
    ({"bias": "all"}, "it trains biases"),
    ({"r": 1024}, "rank 1024 is outside 1-512"),
    ({"target_modules": ["q_proj", "c_attn"]}, "it adapts c_attn, which vLLM's LoRA"),
    ({"peft_type": "IA3"}, "it is a IA3 adapter"),
])
def test_what_vllm_would_refuse_is_refused_here(change, why):
    from lmtune.deploy.vllm import check_adapter

    config = {"peft_type": "LORA", "r": 8, "lora_alpha": 16, "bias": "none",
              "target_modules": ["q_proj", "v_proj"], **change}
    with pytest.raises(UserError, match=why):
        check_adapter(config, ["base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"])


@pytest.mark.parametrize("rank, need", [(8, 8), (16, 16), (17, 32), (320, 320)])
def test_the_rank_sets_the_max_lora_rank_vllm_needs(rank, need):
    from lmtune.deploy.vllm import check_adapter

    assert check_adapter({"r": rank, "target_modules": "q_proj"}, []) == need


def test_bad_vllm_exports_write_nothing(llama_lora_run, tmp_path, capsys):
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "keep.txt").write_text("keep")
    code, out, err = run_cli(capsys, ["export", llama_lora_run.out, "--format", "vllm",
                                      "--out", taken])
    assert_clean_error(code, out, err, "already exists and is not empty")
    with pytest.raises(UserError, match="not a type vLLM loads"):
        lmtune.export(llama_lora_run.out, tmp_path / "q", format="vllm", type="q4_0")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]
