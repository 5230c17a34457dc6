"""Files that are damaged, malformed, hostile or merely odd: each is one error line naming the
file and a non-zero exit, never a traceback or a hang (the red team's cases, each by name)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import lmtune
from lmtune.cli import main
from lmtune.run import checkpoint
from lmtune.trust import sha256

pytestmark = pytest.mark.faults

FAST = dict(split_on="\n", block_size=64, precision="fp32", device="cpu", sample_every=0,
            report=False)


def _clean_error(capsys, code: int, *needles: str) -> str:
    out, err = capsys.readouterr()
    assert code == 2, err
    assert "Traceback" not in err and err.startswith("error: "), err
    for needle in needles:
        assert needle in err, err
    return err


def _header(tensors: dict) -> dict:
    """A hand-made safetensors header for `tensors` (name -> (dtype, shape, offsets))."""
    return {name: {"dtype": d, "shape": s, "data_offsets": o} for name, (d, s, o) in
            tensors.items()}


def _write(path: Path, header: dict, data: bytes) -> Path:
    raw = json.dumps(header).encode()
    path.write_bytes(len(raw).to_bytes(8, "little") + raw + data)
    return path


@pytest.mark.parametrize("case", ["float-offsets", "string-shape", "int-metadata",
                                  "trailing-bytes"])
def test_malformed_safetensors_that_passed_the_old_check_are_refused(case, tmp_path):
    from lmtune.errors import UserError
    from lmtune.trust import check_safetensors

    header = _header({"w": ("F32", [2], [0, 8])})
    data = bytes(8)
    if case == "float-offsets":
        header["w"]["data_offsets"] = [0.0, 8.0]
    elif case == "string-shape":
        header["w"]["shape"] = ["2"]
    elif case == "int-metadata":
        header["__metadata__"] = {"format": 1}
    else:
        data += bytes(64)
    path = _write(tmp_path / "w.safetensors", header, data)
    with pytest.raises(UserError, match="is not a valid safetensors file"):
        check_safetensors(path)


@pytest.fixture
def checkpointed(tiny_gpt2, lines_file, tmp_path):
    out = tmp_path / "run"
    lmtune.train(lines_file, model=str(tiny_gpt2), out=str(out), method="full", max_steps=2,
                 **FAST)
    return out, checkpoint.latest(out / "checkpoints")


@pytest.mark.parametrize("manifest", ["[]", "null", "{}", '{"state.json": 5}',
                                      '{"../x": "' + "0" * 64 + '"}'])
def test_a_manifest_of_the_wrong_shape_is_refused(manifest, checkpointed, capsys):
    out, ckpt = checkpointed
    (ckpt / "manifest.json").write_text(manifest)
    _clean_error(capsys, main(["train", "--resume", "--out", str(out), "--max-steps", "3"]),
                 "manifest")


def test_a_file_the_manifest_does_not_list_is_refused_not_loaded(checkpointed, capsys):
    out, ckpt = checkpointed
    save_file({"transformer.wte.weight": torch.zeros(2, 2)},
              ckpt / "model" / "zz-extra.safetensors")
    err = _clean_error(capsys, main(["train", "--resume", "--out", str(out), "--max-steps",
                                     "3"]), "zz-extra.safetensors")
    assert "not a file lmtune wrote" in err
    with pytest.raises(lmtune.UserError, match="zz-extra.safetensors, which its manifest does "
                                               "not list"):
        checkpoint.verify(ckpt)


def test_optimizer_json_garbage_under_a_rewritten_manifest_is_refused(checkpointed, capsys):
    out, ckpt = checkpointed
    (ckpt / "optimizer.json").write_text('{"param_groups": [], "state": {"0": 5}}')
    manifest = json.loads((ckpt / "manifest.json").read_text())
    manifest["optimizer.json"] = sha256(ckpt / "optimizer.json")
    (ckpt / "manifest.json").write_text(json.dumps(manifest))
    _clean_error(capsys, main(["train", "--resume", "--out", str(out), "--max-steps", "3"]),
                 "malformed optimizer")


def test_a_flipped_byte_in_final_is_refused_on_load(checkpointed, capsys):
    out, _ = checkpointed
    weights = out / "final" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0x01  # inside a tensor: the header still checks out
    weights.write_bytes(bytes(data))
    _clean_error(capsys, main(["generate", str(out), "--max-new-tokens", "2"]),
                 "does not match its manifest")


def test_a_note_beside_the_final_model_is_no_damage(checkpointed, capsys):
    out, _ = checkpointed
    (out / "final" / "NOTES.md").write_text("my notes")
    assert main(["generate", str(out), "--max-new-tokens", "2", "--device", "cpu"]) == 0


def test_an_adapter_naming_itself_as_its_base_is_refused(lora_run, tmp_path, capsys):
    adapter = Path(shutil.copytree(lora_run.final, tmp_path / "adapter"))
    info = json.loads((adapter / "lmtune.json").read_text())
    (adapter / "lmtune.json").write_text(json.dumps({**info, "base_model": str(adapter)}))
    (adapter / "manifest.json").unlink()
    _clean_error(capsys, main(["generate", str(adapter), "--max-new-tokens", "2"]),
                 "names itself as its base model")


@pytest.mark.parametrize("damage", ["truncated-config", "truncated-tokenizer", "unknown-type",
                                    "no-weights", "shape-mismatch", "pickle-name"])
def test_a_damaged_model_folder_is_one_error_line(damage, tiny_gpt2, tmp_path, capsys):
    folder = Path(shutil.copytree(tiny_gpt2, tmp_path / "model"))
    config = json.loads((folder / "config.json").read_text())
    if damage == "truncated-config":
        (folder / "config.json").write_text(json.dumps(config)[:40])
    elif damage == "truncated-tokenizer":
        text = (folder / "tokenizer.json").read_text()
        (folder / "tokenizer.json").write_text(text[:len(text) // 2])
    elif damage == "unknown-type":
        (folder / "config.json").write_text(json.dumps({**config, "model_type": "nonesuch"}))
    elif damage == "no-weights":
        (folder / "model.safetensors").unlink()
    elif damage == "shape-mismatch":
        (folder / "config.json").write_text(json.dumps({**config, "n_embd": 32}))
    else:
        (folder / "model.safetensors").rename(folder / "pytorch_model.pickle")
    code = main(["generate", str(folder), "--max-new-tokens", "2", "--device", "cpu"])
    _clean_error(capsys, code, str(folder))


@pytest.mark.parametrize("kind", ["fifo", "dev-zero"])
def test_a_pipe_or_a_device_as_data_or_weights_is_refused_not_read(kind, tiny_gpt2, tmp_path,
                                                                   capsys):
    def odd(path: Path) -> Path:
        if kind == "fifo":
            os.mkfifo(path)
        else:
            path.symlink_to("/dev/zero")
        return path

    data = odd(tmp_path / "data.txt")
    _clean_error(capsys, main(["train", str(data), "--model", str(tiny_gpt2), "--out",
                               str(tmp_path / "run")]), "not a regular file")
    folder = Path(shutil.copytree(tiny_gpt2, tmp_path / "model"))
    (folder / "model.safetensors").unlink()
    odd(folder / "model.safetensors")
    _clean_error(capsys, main(["generate", str(folder), "--max-new-tokens", "2"]),
                 "not a regular file")


@pytest.mark.parametrize("suffix", [".json", ".jsonl"])
def test_json_nested_100000_deep_is_one_error_line(suffix, tiny_gpt2, tmp_path, capsys):
    data = tmp_path / f"deep{suffix}"
    data.write_text("[" * 100_000 + "]" * 100_000 + "\n")
    _clean_error(capsys, main(["train", str(data), "--model", str(tiny_gpt2), "--out",
                               str(tmp_path / "run")]), "nested too deeply")


def test_a_utf16_file_is_told_its_encoding(tiny_gpt2, tmp_path, capsys):
    data = tmp_path / "lines.txt"
    data.write_text("the cat sat on the mat\n" * 20, encoding="utf-16")
    _clean_error(capsys, main(["train", str(data), "--split-on", "\\n", "--model",
                               str(tiny_gpt2), "--out", str(tmp_path / "run")]),
                 "--encoding utf-16")


def test_crlf_lines_split_like_lf_lines_and_say_so(tiny_gpt2, tmp_path):
    data = tmp_path / "crlf.txt"
    data.write_bytes(("the cat sat\r\n\r\n" * 30).encode())
    messages = []
    result = lmtune.train(data, model=str(tiny_gpt2), out=str(tmp_path / "run"), max_steps=1,
                          **{**FAST, "split_on": "\n\n"}, val_split=0,
                          on_event=lambda e, d: messages.append((e, d)))
    start = next(d for e, d in messages if e == "start")
    assert start["train_examples"] == 30 and result.steps == 1
    assert any("Windows line ends" in d.get("text", "") for e, d in messages)


def test_literal_end_token_text_in_the_data_is_warned_about(tiny_gpt2, tmp_path):
    data = tmp_path / "lines.txt"
    data.write_text("the cat <|endoftext|> sat\n" + "a dog ran\n" * 10)
    messages = []
    lmtune.train(data, model=str(tiny_gpt2), out=str(tmp_path / "run"), max_steps=1, **FAST,
                 on_event=lambda e, d: messages.append(d.get("text", "")))
    warning = next(m for m in messages if "<|endoftext|>" in m)
    assert warning.startswith("warning: 1 example contains the text")
    report = lmtune.inspect_data(data, model=str(tiny_gpt2), split_on="\n")
    assert any("<|endoftext|>" in w for w in report.warnings)


def test_a_damaged_token_cache_is_made_again(tiny_gpt2, lines_file, tmp_path,
                                             _token_cache_in_tmp):
    lmtune.prepare_data(lines_file, model=str(tiny_gpt2), split_on="\n")
    for entry in _token_cache_in_tmp.iterdir():
        if (entry / "offsets.npy").is_file():
            (entry / "offsets.npy").write_bytes(b"garbage")
    again = lmtune.prepare_data(lines_file, model=str(tiny_gpt2), split_on="\n")
    assert not again.cached and len(again.docs) == 120


def test_predictions_never_overwrite_their_own_input(tmp_path, capsys):
    data = tmp_path / "new.csv"
    data.write_text("text\nhello\n")
    before = data.read_bytes()
    _clean_error(capsys, main(["predict", str(tmp_path / "run"), "--data", str(data),
                               "--out", str(data)]), "is the --data file itself")
    assert data.read_bytes() == before
