"""Training on two processes (CPU, gloo) must be the same training as on one: the same
per-step losses and final weights as one process with the same global batch, one copy of
every record, and a resume that continues every rank exactly.

Each launch costs about 10 s on a 2-core machine (two Python processes importing torch and
transformers), so the runs are module fixtures that several tests read."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import lmtune
from lmtune.errors import UserError

# GPT-2's dropout off: two processes draw other dropout masks than one, so only a model
# without dropout can give one process's numbers. Cosine would tie the schedule to
# --max-steps, so runs cut in two use a constant rate.
SAME = dict(split_on="\n", precision="fp32", device="cpu", seed=0, method="full", lr=3e-3,
            warmup_steps=2, lr_schedule="constant", log_every=1, eval_every=3,
            sample_every=3, sample_max_new_tokens=8, report=False)
# 903 training tokens in blocks of 75 make 13 blocks: an epoch's last global batch of 4
# leaves the second process nothing, which must still train the same.
BLOCK = 75
STEPS = 6


def _flags(opts: dict) -> list[str]:
    out = []
    for k, v in opts.items():
        flag = "--" + k.replace("_", "-")
        if v is True:
            out.append(flag)
        elif v is False:
            out.append("--no-" + k.replace("_", "-"))
        else:
            out += [flag, str(v)]
    return out


def _env(tmp_cache: Path) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE",
               TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1",
               LMTUNE_HOME=str(tmp_cache), PYTHONPATH=str(Path(lmtune.__file__).parents[1]))
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(args: list[str], env: dict, timeout: int = 240) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True,
                          timeout=timeout)
    return done


def _torchrun(data: Path, opts: dict, env: dict) -> subprocess.CompletedProcess:
    done = _run(["-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port",
                 str(_free_port()), "-m", "lmtune", "train", str(data), *_flags(opts)], env)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def _lmtune(args: list[str], env: dict, ok: bool = True) -> subprocess.CompletedProcess:
    done = _run(["-m", "lmtune", "train", *args], env)
    if ok:
        assert done.returncode == 0, done.stderr[-3000:]
    return done


def _records(out: Path, name: str = "metrics.jsonl") -> list[dict]:
    return [json.loads(x) for x in (out / name).read_text().splitlines()]


def _losses(out: Path) -> list[tuple]:
    return [(r["step"], r["loss"], r["lr"], r["tokens"]) for r in _records(out) if "loss" in r]


def _val(out: Path) -> list[tuple]:
    return [(r["step"], r["val_loss"]) for r in _records(out) if "val_loss" in r]


def _assert_same_losses(a: Path, b: Path, tol: float = 2e-6) -> None:
    """Step, learning rate and token count exactly; the loss (logged to 6 decimals) to the
    last digit: summing in two processes rounds differently."""
    la, lb = _losses(a), _losses(b)
    assert [(s, lr, t) for s, _, lr, t in la] == [(s, lr, t) for s, _, lr, t in lb]
    assert [x[1] for x in la] == pytest.approx([x[1] for x in lb], abs=tol)


def _weights(out: Path) -> dict[str, torch.Tensor]:
    return load_file(out / "final" / "model.safetensors")


def _max_diff(a: Path, b: Path) -> float:
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    return max((wa[k] - wb[k]).abs().max().item() for k in wa)


@pytest.fixture(scope="module")
def setup(tiny_gpt2, session_lines, tmp_path_factory):
    root = tmp_path_factory.mktemp("dist")
    no_dropout = root / "tiny-gpt2-no-dropout"
    no_dropout.mkdir()
    for f in tiny_gpt2.iterdir():
        (no_dropout / f.name).write_bytes(f.read_bytes())
    cfg = json.loads((tiny_gpt2 / "config.json").read_text())
    cfg.update(resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    (no_dropout / "config.json").write_text(json.dumps(cfg))
    return {"root": root, "data": session_lines, "model": no_dropout,
            "dropout_model": tiny_gpt2, "env": _env(root / "home")}


@pytest.fixture(scope="module")
def one_process(setup):
    """The reference: one process, batch 4."""
    opts = {**SAME, "model": str(setup["model"]), "block_size": BLOCK, "batch_size": 4,
            "max_steps": STEPS}
    return lmtune.train(setup["data"], out=str(setup["root"] / "one"), **opts).out


@pytest.fixture(scope="module")
def two_processes(setup):
    """torchrun, 2 processes of batch 2: the same global batch."""
    out = setup["root"] / "two"
    opts = {**SAME, "model": setup["model"], "block_size": BLOCK, "batch_size": 2,
            "max_steps": STEPS, "out": out}
    done = _torchrun(setup["data"], opts, setup["env"])
    return out, done


def test_two_processes_train_like_one_with_the_same_global_batch(one_process, two_processes):
    two, done = two_processes
    assert "global batch 4 blocks per step (2 per device x accumulation 1 x 2)" in done.stderr
    _assert_same_losses(two, one_process)
    assert [s for s, *_ in _losses(two)] == list(range(1, STEPS + 1))
    assert [s for s, _ in _val(two)] == [s for s, _ in _val(one_process)] == [3, 6]
    assert [v for _, v in _val(two)] == pytest.approx([v for _, v in _val(one_process)],
                                                      abs=2e-6)
    # Summed in another order (two processes, and GEMM kernels that block a batch of 2 unlike
    # one of 4), a gradient differs in its last bits, and Adam's division by sqrt(v) carries
    # that into the weights: 2.3e-5 measured on an AVX512/AMX Xeon, under 1e-5 on an AVX2
    # EPYC. Training moves them over 1e-3 (below), ten times this bound.
    assert _max_diff(one_process, two) < 1e-4
    # The comparison can fail: training moved the weights far beyond the tolerance.
    before = load_file(two.parent / "tiny-gpt2-no-dropout" / "model.safetensors")
    assert max((w - before[k]).abs().max().item() for k, w in _weights(two).items()) > 1e-3


def test_two_processes_write_one_copy_of_every_record(one_process, two_processes):
    two, done = two_processes
    for name in ("metrics.jsonl", "samples.jsonl"):
        got = [(r["step"], sorted(r)) for r in _records(two, name)]
        assert got == [(r["step"], sorted(r)) for r in _records(one_process, name)]
        assert len(got) == len(set(map(str, got)))
    assert sorted(p.name for p in two.iterdir()) == sorted(p.name for p in one_process.iterdir())
    assert done.stdout.count("final model:") == 1  # only rank 0 speaks
    state = json.loads((two / "checkpoints" / "step-000006" / "state.json").read_text())
    assert state["world_size"] == 2
    rng = load_file(two / "checkpoints" / "step-000006" / "rng.safetensors")
    assert sorted(rng) == ["rank0.cpu", "rank1.cpu"]


@pytest.fixture(scope="module")
def devices_runs(setup):
    """`lmtune train --devices 2` end to end, with dropout (each rank its own masks): once
    straight, once stopped at step 3 and resumed by `lmtune train --resume` alone."""
    env, root = setup["env"], setup["root"]
    opts = {**SAME, "model": setup["dropout_model"], "block_size": 64, "batch_size": 2,
            "devices": 2}
    straight = _lmtune([str(setup["data"]), *_flags(opts), "--max-steps", str(STEPS),
                        "--report", "--out", str(root / "straight")], env)
    _lmtune([str(setup["data"]), *_flags(opts), "--max-steps", "3", "--out",
             str(root / "resumed")], env)
    resumed = _lmtune(["--resume", "--out", str(root / "resumed"), "--max-steps", str(STEPS)],
                      env)
    return root / "straight", root / "resumed", straight, resumed


def test_devices_2_on_the_cpu_makes_an_ordinary_run_folder(devices_runs, one_process):
    straight, _, done, _ = devices_runs
    assert "distributed: 2 processes, global batch 4 blocks" in done.stderr
    assert f"final model: {straight / 'final'}" in done.stdout
    for name in ("config.yaml", "metrics.jsonl", "samples.jsonl", "final", "checkpoints",
                 "loss.png", "report.html"):
        assert (straight / name).exists(), name
    assert not (straight / ".lock").exists()
    assert "devices: 2" in (straight / "config.yaml").read_text()
    assert lmtune.generate(straight, max_new_tokens=4, seed=0)  # the model loads and runs


def test_resume_on_two_processes_equals_an_uninterrupted_run(devices_runs):
    straight, resumed, _, resumed_done = devices_runs
    assert "resuming at step 3" in resumed_done.stderr
    assert _losses(resumed) == _losses(straight)
    assert _val(resumed) == _val(straight)
    assert _max_diff(straight, resumed) < 1e-6


def test_resume_on_another_number_of_processes_says_what_it_means(devices_runs):
    _, resumed, _, _ = devices_runs
    with pytest.raises(UserError) as e:
        lmtune.train(out=str(resumed), resume=True, max_steps=STEPS + 2, devices=1)
    assert "trained on 2 processes" in e.value.message
    assert "global batch" in e.value.message
    assert "--devices 2" in e.value.hint


def test_fsdp_trains_and_resumes_like_one_process(setup, one_process):
    """FSDP2 on gloo: stopped at step 3 and resumed from its gathered checkpoint."""
    env, out = setup["env"], setup["root"] / "fsdp"
    opts = {**SAME, "model": setup["model"], "block_size": BLOCK, "batch_size": 2,
            "devices": 2, "fsdp": True}
    first = _lmtune([str(setup["data"]), *_flags(opts), "--max-steps", "3", "--out",
                     str(out)], env, ok=False)
    if first.returncode != 0 and "fully_shard" in first.stderr:  # pragma: no cover
        pytest.skip("this torch has no FSDP2 on CPU/gloo: " + first.stderr.splitlines()[-1])
    assert first.returncode == 0, first.stderr[-3000:]
    _lmtune(["--resume", "--out", str(out), "--max-steps", str(STEPS)], env)
    # Sharded reductions add in another order than one process: about 3e-5 after 6 steps.
    assert _max_diff(one_process, out) < 2e-4
    assert [s for s, *_ in _losses(out)] == list(range(1, STEPS + 1))
    assert [x[1] for x in _losses(out)] == pytest.approx([x[1] for x in _losses(one_process)],
                                                         abs=1e-4)
    # Saved whole: an ordinary transformers model, with the tied LM head stored once.
    assert set(_weights(out)) == set(_weights(one_process))


def test_fsdp_and_devices_refuse_what_they_cannot_do(setup, tmp_path):
    base = dict(model=str(setup["model"]), out=str(tmp_path / "r"), split_on="\n",
                device="cpu")
    with pytest.raises(UserError, match="--fsdp is for --method full or freeze"):
        lmtune.train(setup["data"], method="lora", fsdp=True, devices=2, **base)
    with pytest.raises(UserError, match="--fsdp shards the model over several processes"):
        lmtune.train(setup["data"], method="full", fsdp=True, **base)
    with pytest.raises(UserError, match="--dry-run times steps on one process"):
        lmtune.train(setup["data"], devices=2, dry_run=True, **base)
    with pytest.raises(UserError, match="--devices must be at least 1"):
        lmtune.train(setup["data"], devices=0, **base)
    assert not (tmp_path / "r").exists()


def test_resume_hint_names_the_launcher_the_run_needs(monkeypatch):
    from lmtune.distributed import RESULT_ENV, resume_command
    for name in ("WORLD_SIZE", "LOCAL_WORLD_SIZE", RESULT_ENV):
        monkeypatch.delenv(name, raising=False)
    assert resume_command("r") == "lmtune train --resume --out r"
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert resume_command("r") == ("torchrun --nproc_per_node 2 --nnodes 2 ... -m lmtune train "
                                   "--resume --out r")
    monkeypatch.setenv(RESULT_ENV, "/tmp/x")  # a --devices run relaunches itself
    assert resume_command("r") == "lmtune train --resume --out r"


@pytest.mark.parametrize("method", ["full", "lora", "fsdp"])
def test_preference_on_two_processes_trains_like_one(setup, method, tmp_path, monkeypatch):
    """DPO pairs sharded over two ranks (batch 2 each) against one process (batch 4): the
    same losses and rewards each step, and the same final weights. With full the reference
    log-probabilities are cached first (each rank finds the same cache), with LoRA they are
    the adapter switched off; under FSDP (full, sharded) the same cache serves."""
    rows = [{"prompt": f"question {i % 5} answer", "chosen": " the cat sat on the mat",
             "rejected": " he did not get arrays" if i % 2 else " engines weave patterns"}
            for i in range(24)]
    data = tmp_path / "prefs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    fsdp = method == "fsdp"
    method = "full" if fsdp else method
    opts = {**{k: v for k, v in SAME.items() if k != "split_on"}, "task": "preference",
            "method": method, "model": str(setup["model"]),
            "max_steps": 4, "lr": 1e-3 if method == "full" else 1e-2, "eval_every": 4,
            "sample_every": 0, "val_split": 0.25}
    env = dict(setup["env"], LMTUNE_HOME=str(tmp_path / "home"))
    monkeypatch.setenv("LMTUNE_HOME", str(tmp_path / "home-one"))
    one = lmtune.train(str(data), out=str(tmp_path / "one"), batch_size=4, **opts).out
    two = tmp_path / "two"
    _torchrun(data, {**opts, "batch_size": 2, "out": two, **({"fsdp": True} if fsdp else {})},
              env)
    _assert_same_losses(one, two, tol=1e-5)
    rewards = lambda out: [r["reward_accuracy"] for r in _records(out)  # noqa: E731
                           if "reward_accuracy" in r]
    assert rewards(one) == pytest.approx(rewards(two), abs=1e-6) and rewards(one)
    assert [s for s, _ in _val(one)] == [s for s, _ in _val(two)] == [4]
    assert [v for _, v in _val(one)] == pytest.approx([v for _, v in _val(two)], abs=1e-5)
    name = "model.safetensors" if method == "full" else "adapter_model.safetensors"
    wa, wb = (load_file(out / "final" / name) for out in (one, two))
    assert wa.keys() == wb.keys() and max(
        (wa[k] - wb[k]).abs().max().item() for k in wa) < 1e-5


def test_an_extended_lora_run_on_two_processes_trains_like_one(setup, tmp_path, monkeypatch):
    """--extend-tokenizer under LoRA on two ranks (batch 2 each) against one process (batch
    4): the same losses, and the same new rows at the end. A new row moves only when some
    rank's share of the step read its piece (training/unread_rows.py), so the ranks agree on
    the union of their reads; masking each rank by its own share would split the ranks' rows
    and differ from one process."""
    from tiny_models import chinese_corpus
    data = chinese_corpus(tmp_path / "zh.txt", lines=60)
    opts = {**SAME, "method": "lora", "model": str(setup["model"]), "extend_tokenizer": 40,
            "block_size": 48, "max_steps": 4, "lr": 1e-2, "eval_every": 4, "sample_every": 0}
    env = dict(setup["env"], LMTUNE_HOME=str(tmp_path / "home"))
    monkeypatch.setenv("LMTUNE_HOME", str(tmp_path / "home-one"))
    one = lmtune.train(str(data), out=str(tmp_path / "one"), batch_size=4, **opts).out
    two = tmp_path / "two"
    _torchrun(data, {**opts, "batch_size": 2, "out": two}, env)
    _assert_same_losses(one, two, tol=1e-5)
    wa, wb = (load_file(out / "final" / "adapter_model.safetensors") for out in (one, two))
    (rows,) = [k for k in wa if "trainable_tokens" in k]
    assert wa.keys() == wb.keys()
    (ext,) = (tmp_path / "home-one" / "extended").iterdir()
    start = load_file(ext / "model.safetensors")["transformer.wte.weight"][-40:]
    moved = [{i for i in range(40) if not torch.equal(w[rows][i], start[i])} for w in (wa, wb)]
    assert moved[0] == moved[1] and 0 < len(moved[0]) < 40
    # A row one rank masked and the other did not would differ by Adam steps of lr (1e-2);
    # summing over two ranks leaves differences that Adam scales up to about 1e-5 here.
    assert (wa[rows] - wb[rows]).abs().max() < 1e-4
