"""One source of defaults and help: the dataclasses. YAML overrides them, CLI flags override
YAML, and a run's saved config.yaml passed back with --config reproduces the run's config."""

from __future__ import annotations

import dataclasses

import pytest
import yaml

import lmtune
from lmtune import config as config_mod
from lmtune.cli import main
from lmtune.config import GenerateConfig, MergeConfig, TrainConfig
from lmtune.run.folder import train_config
from lmtune.errors import UserError


@pytest.fixture
def seen(monkeypatch):
    """Run `lmtune train` up to the config: record what train() would train with, then stop."""
    got = {}

    def fake_train(config=None, *, config_file=None, on_event=None, **overrides):
        got["cfg"] = config if config is not None else train_config(overrides, config_file)
        raise UserError("stopped by the test")

    import lmtune.training.train as train_module
    monkeypatch.setattr(train_module, "train", fake_train)
    return got


def _train_cfg(seen, capsys, *argv) -> TrainConfig:
    assert main(["train", *map(str, argv)]) == 2
    assert "stopped by the test" in capsys.readouterr().err
    return seen["cfg"]


def test_defaults_come_from_the_dataclass(seen, capsys):
    cfg = _train_cfg(seen, capsys, "data.txt")
    assert cfg == TrainConfig(data="data.txt")
    assert (cfg.method, cfg.lora_r, cfg.pack, cfg.sample_prompts) == ("lora", 8, True, [])


def test_yaml_overrides_defaults_and_flags_override_yaml(seen, capsys, tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("lr: 0.01\nlora-r: 4\nmethod: full\nsample_prompts: Hello\npack: false\n"
                    "epochs: 2\n", encoding="utf-8")
    cfg = _train_cfg(seen, capsys, "data.txt", "--config", path)
    assert (cfg.lr, cfg.lora_r, cfg.method, cfg.sample_prompts, cfg.pack) == \
        (0.01, 4, "full", ["Hello"], False)
    assert isinstance(cfg.epochs, float) and cfg.epochs == 2.0
    assert cfg.seed == TrainConfig.seed  # untouched fields keep the dataclass default
    cfg = _train_cfg(seen, capsys, "data.txt", "--config", path, "--lr", "0.02", "--pack",
                     "--sample-prompt", "A", "--sample-prompt", "B",
                     "--lora-targets", "c_attn", "c_fc")
    assert (cfg.lr, cfg.lora_r, cfg.pack) == (0.02, 4, True)
    assert cfg.sample_prompts == ["A", "B"] and cfg.lora_targets == ["c_attn", "c_fc"]


def test_no_flag_turns_a_true_default_off(seen, capsys):
    assert _train_cfg(seen, capsys, "data.txt", "--no-pack").pack is False


def test_python_api_uses_the_same_precedence(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("lr: 0.01\nkeep: 5\n", encoding="utf-8")
    cfg = config_mod.build(TrainConfig, {"lr": 0.5}, str(path))
    assert (cfg.lr, cfg.keep, cfg.grad_accum) == (0.5, 5, TrainConfig.grad_accum)
    with pytest.raises(UserError, match="unknown option 'learning_rate'"):
        config_mod.build(TrainConfig, {"learning_rate": 0.5})
    with pytest.raises(UserError, match="unknown --method 'sgd'; choose one of: lora"):
        config_mod.build(TrainConfig, {"method": "sgd"})
    with pytest.raises(UserError, match="'resume' must be bool"):
        config_mod.build(TrainConfig, {"resume": "yes"})


@pytest.mark.parametrize("command, cls", [("train", TrainConfig), ("generate", GenerateConfig),
                                          ("merge", MergeConfig)])
def test_help_shows_every_field_help_text_and_default(command, cls, capsys):
    with pytest.raises(SystemExit) as e:
        main([command, "--help"])
    assert e.value.code == 0
    text = "".join(capsys.readouterr().out.split())  # argparse re-wraps lines
    for f in dataclasses.fields(cls):
        assert "".join(f.metadata["help"].split()) in text, f.name
    if cls is TrainConfig:
        assert "(default:8)" in text and "--lora-r" in text and "--no-pack" in text
        assert "5%ofthesteps" in text  # a literal % survives argparse's formatting


def test_saved_config_passed_back_reproduces_the_run_config(lora_run, tmp_path, capsys):
    saved = lora_run.out / "config.yaml"
    original = yaml.safe_load(saved.read_text(encoding="utf-8"))
    assert set(original) == {f.name for f in dataclasses.fields(TrainConfig)}
    # Everything chosen at run start was resolved and saved, not left as None.
    for name in ("block_size", "batch_size", "lr", "warmup_steps", "eval_every",
                 "save_every", "sample_every"):
        assert original[name] is not None, name
    out = tmp_path / "again"
    assert main(["train", "--config", str(saved), "--out", str(out)]) == 0, \
        capsys.readouterr().err
    again = yaml.safe_load((out / "config.yaml").read_text(encoding="utf-8"))
    assert again == dict(original, out=str(out))
    assert original["split_on"] == "\n"


def test_saved_config_describes_the_run_not_the_last_command(tiny_gpt2, lines_file, tmp_path,
                                                             fast, capsys):
    out = tmp_path / "run"
    opts = dict(model=str(tiny_gpt2), out=str(out), sample_every=0, report=False, **fast)
    lmtune.train(lines_file, max_steps=1, **opts)
    lmtune.train(lines_file, max_steps=2, overwrite=True, **opts)
    lmtune.train(out=str(out), resume=True, force_resume=True, lr=0.01, max_steps=3)
    saved = yaml.safe_load((out / "config.yaml").read_text(encoding="utf-8"))
    assert [saved[k] for k in ("resume", "force_resume", "overwrite", "dry_run")] == [False] * 4
    assert saved["lr"] == 0.01 and saved["max_steps"] == 3  # the settings it now runs with
    # Passed back, it starts a like run in a new folder (with resume: true it would refuse:
    # the new folder holds no run to resume).
    again = tmp_path / "again"
    assert main(["train", "--config", str(out / "config.yaml"), "--out", str(again)]) == 0, \
        capsys.readouterr().err
    assert (again / "final").is_dir()
    # And the run still resumes from it, changed settings still checked.
    assert lmtune.train(out=str(out), resume=True, max_steps=4).steps == 4
    with pytest.raises(lmtune.UserError, match="--lr changed from 0.01 to 0.02"):
        lmtune.train(out=str(out), resume=True, max_steps=5, lr=0.02)


def test_every_dataclass_field_has_help_and_valid_default():
    for cls in (TrainConfig, GenerateConfig, MergeConfig):
        for f in dataclasses.fields(cls):
            assert f.metadata.get("help"), f"{cls.__name__}.{f.name} has no help text"
            choices = f.metadata.get("choices")
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            if choices and default is not None:
                assert default in choices, f.name
