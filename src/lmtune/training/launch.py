"""`lmtune train --devices N`: the same training on N processes of this machine, under torchrun.

    lmtune train (this process)                    waits; forwards Ctrl-C / SIGTERM once
      python -m lmtune.training.launch N CONFIG    torchrun's agent (torch.distributed.run)
        python -m lmtune train --config CONFIG     N workers; rank 0 writes the run and RESULT

The workers read the resolved config from a YAML file rather than re-parsed flags, so the
Python API (`lmtune.train(..., devices=2)`) and the CLI launch the same thing. The agent runs
in its own session: a Ctrl-C in the terminal reaches this process only, which sends one
SIGTERM down (a second SIGINT to the workers would mean "stop now, without a checkpoint").
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from lmtune import config as config_mod
from lmtune.distributed import RESULT_ENV
from lmtune.errors import UserError
from lmtune.training.result import Interrupted, TrainResult


class WorkersFailed(UserError):
    """The workers printed their own error; this only carries their exit code."""

    def __init__(self, exit_code: int, devices: int):
        super().__init__(f"training on {devices} processes stopped (a worker exited with code "
                         f"{exit_code}; its messages are above)")
        self.exit_code = exit_code


def check_devices(cfg) -> str:
    """The device the workers will use, after checking that there are enough of them."""
    import torch

    from lmtune.device import pick_device

    device = pick_device(cfg.device)
    if device == "cuda" and cfg.devices > torch.cuda.device_count():
        raise UserError(f"--devices {cfg.devices}, but this machine has "
                        f"{torch.cuda.device_count()} CUDA GPU(s)",
                        hint=f"use --devices {torch.cuda.device_count()} or fewer (one process "
                             f"per GPU), or several machines with torchrun --nnodes")
    if device not in ("cuda", "cpu"):
        raise UserError(f"--devices needs CUDA GPUs or the CPU (the device is {device})",
                        hint="train on one process (drop --devices), or pass --device cpu")
    return device


def relaunch(cfg):
    """Run `cfg` on cfg.devices processes and return rank 0's TrainResult."""
    from lmtune.cpu import thread_budget

    device = check_devices(cfg)
    env = dict(os.environ)
    if device == "cpu" and not env.get("OMP_NUM_THREADS"):
        # torchrun would give each process one thread; the processes share the cores.
        env["OMP_NUM_THREADS"] = str(thread_budget(cfg.threads, cfg.devices).threads)
    with tempfile.TemporaryDirectory(prefix="lmtune-launch-") as tmp:
        config_file, result_file = Path(tmp) / "config.yaml", Path(tmp) / "result.json"
        config_file.write_text(config_mod.to_yaml(cfg), encoding="utf-8")
        env[RESULT_ENV] = str(result_file)
        agent = subprocess.Popen([sys.executable, "-m", "lmtune.training.launch",
                                  str(cfg.devices), str(config_file)], env=env,
                                 start_new_session=True)
        code = _wait_forwarding_signals(agent)
        if code != 0:
            if code == 130:
                raise Interrupted("training stopped by a signal; the workers saved a "
                                  "checkpoint if they finished their step",
                                  hint=f"resume with: lmtune train --resume --out {cfg.out}")
            raise WorkersFailed(code, cfg.devices)
        data = json.loads(result_file.read_text(encoding="utf-8"))
    for name in ("out", "final"):
        data[name] = Path(data[name])
    return TrainResult(**data)


def _wait_forwarding_signals(agent: subprocess.Popen) -> int:
    def forward(signum, frame):
        # The first signal asks for a checkpoint and a clean stop; torchrun passes SIGTERM
        # to every worker. A second Ctrl-C is passed as SIGINT: the workers stop at once.
        sig = signal.SIGINT if forward.sent and signum == signal.SIGINT else signal.SIGTERM
        forward.sent = True
        try:
            agent.send_signal(sig)
        except ProcessLookupError:
            pass
    forward.sent = False
    old = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        return agent.wait()
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)


def hand_back(result) -> None:
    """In rank 0 of a --devices launch: the TrainResult, for the process that launched it."""
    path = os.environ.get(RESULT_ENV)
    if not path or os.environ.get("RANK", "0") != "0":
        return
    data = {k: str(v) if isinstance(v, Path) else v
            for k, v in dataclasses.asdict(result).items()}
    Path(path).write_text(json.dumps(data), encoding="utf-8")


def _agent(devices: int, config_file: str) -> int:
    """torchrun's agent, without its traceback when a worker fails: the worker printed its
    own `error:` line, and the exit code says the rest."""
    import logging

    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)
    # --standalone: a rendezvous on a free local port, so runs side by side never collide.
    args = parse_args(["--standalone", "--nproc-per-node", str(devices), "-m", "lmtune",
                       "train", "--config", config_file])
    try:
        run(args)
    except ChildFailedError as e:
        first = e.get_first_failure()[1]
        return first.exitcode if first.exitcode > 0 else 128 - first.exitcode
    except Exception as e:  # the agent's SignalException: stopped by SIGTERM
        if type(e).__name__ == "SignalException":
            return 130
        raise
    return 0


if __name__ == "__main__":
    raise SystemExit(_agent(int(sys.argv[1]), sys.argv[2]))
