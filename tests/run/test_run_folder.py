"""The run folder's one owner: finding the run a path belongs to, and reading its config back
as the typed config it was written from."""

from __future__ import annotations

import pytest

from lmtune.config import TrainConfig
from lmtune.errors import UserError
from lmtune.run.folder import RunFolder


def test_a_run_is_found_from_its_final_folder_or_a_checkpoint(lora_run):
    run = RunFolder(lora_run.out)
    latest = sorted(run.checkpoints.iterdir())[-1]
    for spec in (run.path, run.final, latest, latest / "model"):
        assert RunFolder.containing(spec) == run
    assert RunFolder.containing(run.path.parent) is None


def test_the_saved_config_reads_back_typed_with_what_the_run_resolved(lora_run):
    cfg = RunFolder(lora_run.out).config()
    assert isinstance(cfg, TrainConfig)
    assert cfg.method == "lora" and cfg.block_size == 64 and cfg.seed == 0
    assert cfg.lr == 2e-2 and cfg.warmup_steps is not None and not cfg.resume


def test_a_config_yaml_cut_short_is_called_damaged(lora_run, tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    lines = (lora_run.out / "config.yaml").read_text(encoding="utf-8").splitlines()
    (folder / "config.yaml").write_text("\n".join(lines[:3]) + "\n", encoding="utf-8")
    with pytest.raises(UserError, match="incomplete: it lacks"):
        RunFolder(folder).config()
