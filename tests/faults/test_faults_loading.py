"""Loading what strangers made: pickled weights are refused unless --allow-pickle, a pickle
planted in a checkpoint is never unpickled, remote code needs --trust-remote-code, and a
malformed safetensors file is one error line. (The sandboxed chat template is proven in
test_serve_limits.py.)"""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import re
import shutil
from pathlib import Path

import pytest
from cli_helpers import assert_clean_error as _assert_clean_error, run_cli as _run

import lmtune
from lmtune.cli.parser import COMMANDS
from lmtune.run import checkpoint
from lmtune.trust import sha256

pytestmark = pytest.mark.faults


class _Plant:
    """Unpickling this creates the marker file: proof that a pickle was loaded."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _plant(path: Path, marker: Path) -> None:
    path.write_bytes(pickle.dumps({"state": _Plant(marker)}))


def _files(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*"))


def _pickle_only(model: Path, folder: Path) -> Path:
    """A copy of `model` with its weights in pytorch_model.bin only."""
    import torch
    from safetensors.torch import load_file

    folder = Path(shutil.copytree(model, folder))
    torch.save(load_file(folder / "model.safetensors"), folder / "pytorch_model.bin")
    (folder / "model.safetensors").unlink()
    return folder


@pytest.fixture
def pickled_model(tiny_gpt2, tmp_path) -> Path:
    return _pickle_only(tiny_gpt2, tmp_path / "pickled")


def test_pickled_weights_are_refused_unless_allow_pickle(pickled_model, lines_file, tmp_path,
                                                         capsys, fast):
    before = _files(tmp_path)
    code, out, err = _run(capsys, ["train", lines_file, "--model", pickled_model, "--out",
                                   tmp_path / "run"])
    _assert_clean_error(code, out, err, "weights only as pickle files (pytorch_model.bin)",
                        "--allow-pickle")
    assert _files(tmp_path) == before
    code, out, err = _run(capsys, ["generate", pickled_model, "--max-new-tokens", "2"])
    _assert_clean_error(code, out, err, "--allow-pickle")
    result = lmtune.train(lines_file, model=str(pickled_model), out=str(tmp_path / "run"),
                          allow_pickle=True, max_steps=1, sample_every=0, report=False, **fast)
    assert result.steps == 1


@pytest.fixture(scope="module")
def on_pickled_base(tiny_gpt2, session_lines, tmp_path_factory) -> dict[str, Path]:
    """A pickle-only base and three runs trained on it with --allow-pickle: LoRA, full (with
    its end-of-run report, which loads the base again) and classification."""
    root = tmp_path_factory.mktemp("pickled-base")
    base = _pickle_only(tiny_gpt2, root / "base")
    report_events = []
    # conftest's FAST, spelled out: tests/data has a conftest of its own, so importing
    # `conftest` here can pick the wrong one in the full suite.
    common = dict(model=str(base), allow_pickle=True, max_steps=1, split_on="\n",
                  block_size=64, precision="fp32", device="cpu", seed=0)
    lora = lmtune.train(session_lines, out=str(root / "lora"), sample_every=0, report=False,
                        **common)
    full = lmtune.train(session_lines, out=str(root / "full"), method="full", sample_every=1,
                        sample_max_new_tokens=4, on_event=lambda e, d: report_events.append(
                            (e, d)) if e in ("report", "message") else None, **common)
    labelled = root / "labelled.jsonl"
    labelled.write_text("".join(json.dumps({"text": f"the {w} sat", "label": w[0]}) + "\n"
                                for w in ("cat", "dog") * 8), encoding="utf-8")
    cls = lmtune.train(labelled, out=str(root / "cls"), task="classify", text_column="text",
                       label_column="label", **{**common, "split_on": None})
    return {"base": base, "lora": lora.out, "full": full.out, "cls": cls.out,
            "lines": session_lines, "root": root, "report_events": report_events}


# Every command that loads weights, on a model or run whose base has pickled weights only.
PICKLE_REFUSALS = {
    "eval": lambda r: ["eval", r["base"], "--data", r["lines"], "--split-on", "\n"],
    "compare": lambda r: ["compare", r["base"], r["full"]],
    "diff": lambda r: ["diff", r["base"], r["full"]],
    "merge": lambda r: ["merge", r["lora"], "--out", r["root"] / "merged"],
    "predict": lambda r: ["predict", r["cls"], "--text", "the cat sat"],
    "report": lambda r: ["report", r["full"]],
    "serve": lambda r: ["serve", r["base"], "--port", "0"],
    "demo": lambda r: ["demo", "--model", r["base"], "--out", r["root"] / "demo"],
    "tokenizer extend": lambda r: ["tokenizer", "extend", "--model", r["base"], "--corpus",
                                   r["lines"], "--out", r["root"] / "extended"],
}


@pytest.mark.parametrize("command", list(PICKLE_REFUSALS))
def test_every_pickle_refusal_names_a_flag_its_command_accepts(command, on_pickled_base,
                                                               tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LMTUNE_HOME", str(tmp_path))  # demo writes its jokes file there
    root = on_pickled_base["root"]
    before = {p: p.stat().st_mtime_ns for p in root.rglob("*")}
    code, _, err = _run(capsys, PICKLE_REFUSALS[command](on_pickled_base))
    # serve logs "loading ..." first and demo prints its plan; the last lines are the error.
    error, hint = err.strip().splitlines()[-2:]
    assert code == 2 and "Traceback" not in err, err
    assert error.startswith("error: ") and "weights only as pickle files" in error, err
    assert hint.startswith("hint: ") and "--allow-pickle" in hint, err
    cls = {name: c for name, c, _, _ in COMMANDS}[command]
    flags = {"--" + f.name.replace("_", "-") for f in dataclasses.fields(cls)
             if not f.metadata.get("positional")}
    for named in re.findall(r"--[a-z][a-z-]*", error + hint):
        assert named in flags, f"lmtune {command} has no {named}: {err}"
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*")} == before  # nothing written
    assert not (tmp_path / "runs").exists()


def test_commands_other_than_train_load_pickled_weights_with_allow_pickle(on_pickled_base,
                                                                         tmp_path, capsys):
    r = on_pickled_base
    # The end-of-run report of the full run loaded the base with training's own flag.
    assert [e for e, _ in r["report_events"]] == ["report"], r["report_events"]
    code, out, err = _run(capsys, [*PICKLE_REFUSALS["eval"](r), "--allow-pickle", "--json"])
    assert code == 0, err
    assert json.loads(out)["tokens"] > 0
    code, out, err = _run(capsys, ["merge", r["lora"], "--out", tmp_path / "merged",
                                   "--allow-pickle"])
    assert code == 0, err
    assert (tmp_path / "merged" / "model.safetensors").is_file()
    # The merged model is safetensors: it needs no trust any more.
    code, out, err = _run(capsys, ["generate", tmp_path / "merged", "--max-new-tokens", "2"])
    assert code == 0, err


def test_a_malicious_pickle_is_never_unpickled(pickled_model, tiny_gpt2, lines_file, tmp_path,
                                               fast, capsys):
    marker = tmp_path / "PWNED"
    # As a model's weights: refused before anything reads it; with --allow-pickle, torch's
    # weights_only loader refuses the object.
    _plant(pickled_model / "pytorch_model.bin", marker)
    code, _, err = _run(capsys, ["train", lines_file, "--model", pickled_model, "--out",
                                 tmp_path / "a"])
    assert code == 2 and "--allow-pickle" in err
    with pytest.raises(lmtune.UserError, match="hold objects other than tensors"):
        lmtune.train(lines_file, model=str(pickled_model), out=str(tmp_path / "b"),
                     allow_pickle=True, max_steps=1, sample_every=0, report=False, **fast)
    # Planted in a checkpoint, under every name another trainer would read: resume loads
    # safetensors and JSON only.
    out = tmp_path / "run"
    lmtune.train(lines_file, model=str(tiny_gpt2), out=str(out), method="full", max_steps=2,
                 sample_every=0, report=False, **fast)
    ckpt = checkpoint.latest(out / "checkpoints")
    for name in ("optimizer.pt", "scheduler.pt", "rng_state.pth", "training_args.bin",
                 "model/pytorch_model.bin"):
        _plant(ckpt / name, marker)
    # A checkpoint holds exactly what its manifest lists: a planted file is refused by name.
    with pytest.raises(lmtune.UserError, match="is not a file lmtune wrote"):
        lmtune.train(out=str(out), resume=True, max_steps=4)
    with pytest.raises(lmtune.UserError, match="which its manifest does not list"):
        checkpoint.verify(ckpt)
    assert not marker.exists()


def test_a_model_asking_for_remote_code_is_refused_without_the_flag(tiny_gpt2, lines_file,
                                                                    tmp_path, capsys):
    folder = Path(shutil.copytree(tiny_gpt2, tmp_path / "remote"))
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoModelForCausalLM": "modeling_evil.EvilModel"}
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "modeling_evil.py").write_text(f"open({str(tmp_path / 'PWNED')!r}, 'w')\n")
    before = _files(tmp_path)
    for argv in (["train", lines_file, "--model", folder, "--out", tmp_path / "run"],
                 ["generate", folder, "--max-new-tokens", "2"]):
        code, out, err = _run(capsys, argv)
        _assert_clean_error(code, out, err, "asks to run code from its repository",
                            "--trust-remote-code")
    assert _files(tmp_path) == before and not (tmp_path / "PWNED").exists()


def _rewrite(path: Path, edit) -> None:
    data = path.read_bytes()
    n = int.from_bytes(data[:8], "little")
    header = edit(json.loads(data[8:8 + n]))
    raw = json.dumps(header).encode()
    path.write_bytes(len(raw).to_bytes(8, "little") + raw + data[8 + n:])


def _overlap(header: dict) -> dict:
    header["transformer.h.0.ln_1.bias"]["data_offsets"] = \
        header["transformer.h.0.ln_1.weight"]["data_offsets"]
    return header


def _damage(kind: str, path: Path) -> None:
    if kind == "huge-header":
        with open(path, "r+b") as f:
            f.write((1 << 62).to_bytes(8, "little"))
    elif kind == "overlapping":
        _rewrite(path, _overlap)
    elif kind == "truncated":
        os.truncate(path, path.stat().st_size // 2)
    else:  # a shape that does not fit its bytes
        _rewrite(path, lambda h: {**h, "transformer.wte.weight": {
            **h["transformer.wte.weight"], "shape": [10 ** 9, 64]}})


DAMAGE = {"huge-header": "header length 4611686018427387904 bytes",
          "overlapping": "'transformer.h.0.ln_1.bias' and 'transformer.h.0.ln_1.weight' "
                         "overlap|'transformer.h.0.ln_1.weight' and "
                         "'transformer.h.0.ln_1.bias' overlap",
          "truncated": "past the", "bad-shape": "its shape needs"}


@pytest.mark.parametrize("kind", list(DAMAGE))
def test_malformed_safetensors_is_one_clean_error(kind, tiny_gpt2, lines_file, tmp_path,
                                                  capsys):
    folder = Path(shutil.copytree(tiny_gpt2, tmp_path / "damaged"))
    _damage(kind, folder / "model.safetensors")
    before = _files(tmp_path)
    code, out, err = _run(capsys, ["train", lines_file, "--model", folder, "--out",
                                   tmp_path / "run"])
    _assert_clean_error(code, out, err, f"{folder / 'model.safetensors'} is not a valid "
                                        f"safetensors file")
    assert any(part in err for part in DAMAGE[kind].split("|")), err
    assert _files(tmp_path) == before


def test_a_checkpoint_file_rewritten_with_its_manifest_is_still_refused(tiny_gpt2, lines_file,
                                                                        tmp_path, fast):
    out = tmp_path / "run"
    lmtune.train(lines_file, model=str(tiny_gpt2), out=str(out), method="full", max_steps=2,
                 sample_every=0, report=False, **fast)
    ckpt = checkpoint.latest(out / "checkpoints")
    target = ckpt / "optimizer.safetensors"
    os.truncate(target, target.stat().st_size - 100)
    manifest = json.loads((ckpt / "manifest.json").read_text())
    manifest["optimizer.safetensors"] = sha256(target)
    (ckpt / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(lmtune.UserError, match=f"{target} is not a valid safetensors file"):
        lmtune.train(out=str(out), resume=True, max_steps=4)
