"""The embedded default model, for real: GGUF -> cached safetensors folder -> a few LoRA
steps -> an adapter that loads and generates. Converts once per machine (about 20 s)."""

import json

import pytest

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def default_dir():
    from lmtune.models.resolve import default_model_dir
    return default_model_dir()


def test_default_model_converts_to_a_plain_safetensors_folder(default_dir):
    from transformers import AutoConfig

    assert (default_dir / "model.safetensors").is_file()
    config = AutoConfig.from_pretrained(default_dir)
    assert config.model_type == "llama"
    assert config.num_hidden_layers == 30
    assert not getattr(config, "quantization_config", None)  # loadable and savable normally


def test_few_lora_steps_on_the_default_model(default_dir, tmp_path):
    import pyjokes

    import lmtune

    data = tmp_path / "jokes.jsonl"
    data.write_text("\n".join(json.dumps({"joke": j}) for j in
                              pyjokes.get_jokes("en", "neutral")[:40]), encoding="utf-8")
    result = lmtune.train(str(data), template="Joke: {joke}", max_steps=4, batch_size=1,
                          block_size=128, out=str(tmp_path / "run"), sample_every=0,
                          eval_every=4, lr=1e-3)
    metrics = [json.loads(line) for line in (result.out / "metrics.jsonl").open()]
    losses = [m["loss"] for m in metrics if "loss" in m]
    assert losses and all(0 < loss < 10 for loss in losses)
    assert (result.final / "adapter_model.safetensors").is_file()
    info = json.loads((result.final / "lmtune.json").read_text())
    assert info["base_model"] == "smollm2-135m" and info["method"] == "lora"
    samples = lmtune.generate(str(result.out), ["Joke:"], n=2, max_new_tokens=8, seed=0)
    assert len(samples) == 2 and all(s.new_tokens >= 1 for s in samples)
