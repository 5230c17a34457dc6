"""One run over several processes: torchrun, `accelerate launch` or `lmtune train --devices N`.

The launcher sets RANK, WORLD_SIZE and the rendezvous in the environment; `start()` joins the
process group through accelerate (nccl on CUDA, gloo on CPU) and returns a `World`, which
train.py asks everything that differs from a single process:

  - data: a step's batch is the `batch_size * world` blocks one process would take with that
    batch size, in the same seeded order, and rank r trains on its r-th share of them
    (`batches(..., rank=, world=)` in data/packing.py and classify_data.py);
  - the loss of a step is divided by the step's GLOBAL number of target tokens, times the
    world size, because DDP and FSDP average gradients over the ranks: the update is then
    the one a single process makes with the same global batch;
  - rank 0 alone writes the run folder; logged losses and validation sums are all-reduced;
  - checkpoints hold every rank's RNG state and, under FSDP, the gathered full weights and
    optimizer state, so `--resume` continues any rank exactly.

With one process `World()` answers as a no-op everywhere, and nothing here adds a host sync
to the single-process loop.
"""

from __future__ import annotations

import gc
import os
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta

import torch

from lmtune.errors import UserError

# Set by `lmtune train --devices N` (training/launch.py) for its workers: where rank 0 writes
# the TrainResult. A worker that sees it was started by lmtune, not by the user's torchrun.
RESULT_ENV = "LMTUNE_RESULT"
# A rank waits at most this long in a collective. The longest wait is rank 0 tokenizing a new
# corpus while the others wait at a barrier (a few GB of text take minutes); a rank that
# crashed is normally noticed much sooner, since torchrun stops the other workers at once.
TIMEOUT = timedelta(minutes=60)


@dataclass
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0
    fsdp: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.size > 1

    # --- data

    def shard(self, dataset):
        """`dataset` seen by this rank: its share of every batch (the dataset itself alone)."""
        return _RankShard(dataset, self.rank, self.size) if self.active else dataset

    def step_counts(self, micro) -> tuple[int, int]:
        """(target tokens, real tokens) of the step's micro-batches over all ranks: one small
        all-reduce per step, and only under several processes."""
        n_targets = sum(b.n_target_tokens for b in micro)
        n_tokens = sum(b.n_tokens for b in micro)
        if not self.active:
            return n_targets, n_tokens
        n_targets, n_tokens = all_sum(torch.tensor([n_targets, n_tokens], dtype=torch.int64,
                                                   device=_comm_device())).tolist()
        return n_targets, n_tokens

    # --- agreement between ranks

    def agree_on_signal(self, signum: int | None) -> int | None:
        """A signal that reached any rank stops every rank after the same step (torchrun
        forwards SIGTERM to every worker, but a cluster may signal one process only)."""
        if not self.active:
            return signum
        flag = torch.tensor([signum or 0], dtype=torch.int64, device=_comm_device())
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        return int(flag.item()) or None

    def barrier(self) -> None:
        if self.active:
            torch.distributed.barrier()

    def same_path(self, path):
        """Rank 0's `path` on every rank."""
        if not self.active:
            return path
        from pathlib import Path

        data = torch.zeros(4096, dtype=torch.uint8, device=_comm_device())
        if self.is_main:
            raw = str(path).encode("utf-8")[:4095]
            data[:len(raw)] = torch.tensor(list(raw), dtype=torch.uint8)
        torch.distributed.broadcast(data, src=0)
        raw = bytes(data.cpu().tolist())
        return Path(raw[:raw.index(0)].decode("utf-8"))

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        return all_sum(tensor) if self.active else tensor

    # Rank 0 of each machine runs the code between these two first (converting the default
    # model, tokenizing into the token cache); the others wait, then run it and find the
    # files ready. Per machine, since the caches are local. (Two calls rather than a `with`
    # block: a barrier is all it takes, as in accelerate's main_process_first.)
    def local_main_first_begin(self) -> None:
        if self.active and self.local_rank != 0:
            torch.distributed.barrier()

    def local_main_first_end(self) -> None:
        if self.active and self.local_rank == 0:
            torch.distributed.barrier()

    # --- model

    def wrap_fsdp(self, model):
        """--fsdp: torch FSDP2 (`fully_shard`) on every transformer block, then the whole
        model, so each rank holds 1/world of the weights, gradients and optimizer state.
        Parameters stay fp32, as in a single process; bf16/fp16 come from autocast."""
        from torch.distributed.fsdp import fully_shard

        blocks = set(getattr(model, "_no_split_modules", None) or ())
        for module in model.modules():
            if type(module).__name__ in blocks:
                fully_shard(module)
        fully_shard(model)
        return model

    def no_sync(self, model, accelerator):
        """Skip the gradient all-reduce on micro-steps that are not the step's last."""
        if self.fsdp:
            return _fsdp_no_sync(model)
        return accelerator.no_sync(model)

    def full_state(self, model, optimizer) -> "Gathered":
        """What a checkpoint needs from every rank, gathered on rank 0 (a collective: every
        rank calls it at the same step)."""
        if not self.active:
            return Gathered()
        weights = optim = None
        if self.fsdp:
            from torch.distributed.checkpoint.state_dict import (
                StateDictOptions, get_optimizer_state_dict)
            weights = self.full_weights(model)
            optim = get_optimizer_state_dict(model, optimizer, options=StateDictOptions(
                full_state_dict=True, cpu_offload=True))
        return Gathered(weights=weights, optimizer=optim, rng=self._gather_rng())

    def full_weights(self, model) -> dict | None:
        """The full state dict on rank 0 under FSDP (a collective), else None: the model's own
        weights are whole."""
        if not self.fsdp:
            return None
        from torch.distributed.checkpoint.state_dict import (StateDictOptions,
                                                             get_model_state_dict)
        full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True,
                                                                    cpu_offload=True))
        # The gathered dict names a tied weight twice (GPT-2's LM head is its embedding);
        # the saved model, like save_pretrained's own, holds it once.
        tied = ({n for n, _ in model.named_parameters(remove_duplicate=False)}
                - {n for n, _ in model.named_parameters()})
        return {k: v for k, v in full.items() if k not in tied}

    def load_optimizer(self, state: dict, model, optimizer) -> None:
        """A checkpoint's optimizer state (saved whole, keyed by parameter index, or by name
        under FSDP) into this rank's optimizer; under FSDP each rank keeps its own shard."""
        if not self.fsdp:
            optimizer.load_state_dict(state)
            return
        from torch.distributed.checkpoint.state_dict import (StateDictOptions,
                                                             set_optimizer_state_dict)
        set_optimizer_state_dict(model, optimizer, state,
                                 options=StateDictOptions(full_state_dict=True))

    def _gather_rng(self) -> dict[str, torch.Tensor]:
        """Every rank's RNG states, named rank<r>.cpu / rank<r>.cuda: ranks are seeded apart
        so they draw different dropout masks, and each must continue its own stream."""
        mine = {"cpu": torch.get_rng_state()}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            mine["cuda"] = torch.cuda.get_rng_state()
        out = {}
        for name, state in mine.items():
            parts = [torch.empty_like(state, device=_comm_device()) for _ in range(self.size)]
            torch.distributed.all_gather(parts, state.to(_comm_device()))
            out.update({f"rank{r}.{name}": p.cpu() for r, p in enumerate(parts)})
        return out

    def restore_rng(self, rng: dict[str, torch.Tensor]) -> None:
        """This rank's RNG states from a checkpoint's (one process: `cpu` and `cuda<i>`;
        several: `rank<r>.cpu` and `rank<r>.cuda`)."""
        if not self.active:
            torch.set_rng_state(rng["cpu"])
            cuda = [rng[k] for k in sorted(rng) if k.startswith("cuda")]
            if cuda and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(cuda)
            return
        torch.set_rng_state(rng[f"rank{self.rank}.cpu"])
        if f"rank{self.rank}.cuda" in rng and torch.cuda.is_available():
            torch.cuda.set_rng_state(rng[f"rank{self.rank}.cuda"])

    # --- resume

    def check_resume(self, saved_state: dict, out) -> None:
        saved = saved_state.get("world_size", 1)
        if saved == self.size:
            return
        runs = f"{saved} process{'es' if saved > 1 else ''}"
        raise UserError(
            f"cannot resume {out} on {self.size} process{'es' if self.size > 1 else ''}: it "
            f"was trained on {runs}. The global batch (batch size x accumulation x processes) "
            f"decides which blocks every step reads and what an update averages, and each "
            f"process has its own random state, so resuming on another number would repeat "
            f"or skip data and break the run's arithmetic",
            hint=f"resume on {runs} (--devices {saved}, or torchrun --nproc_per_node "
                 f"{saved} on one machine), or start a new run with --out")


@dataclass
class Gathered:
    weights: dict | None = None      # FSDP: the full model state dict (rank 0)
    optimizer: dict | None = None    # FSDP: the full optimizer state dict (rank 0)
    rng: dict | None = None          # every rank's RNG states


class _RankShard:
    """A dataset as rank `rank` of `world` reads it (see the module docstring)."""

    def __init__(self, dataset, rank: int, world: int):
        self.dataset, self.rank, self.world = dataset, rank, world

    def __getattr__(self, name):
        return getattr(self.dataset, name)

    def batches(self, epoch: int, batch_size: int, start: int = 0):
        return self.dataset.batches(epoch, batch_size, start, rank=self.rank, world=self.world)


def all_sum(tensor: torch.Tensor) -> torch.Tensor:
    """The sum over every rank (the tensor itself in a single process)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()
            and torch.distributed.get_world_size() > 1):
        return tensor
    device = tensor.device
    tensor = tensor.to(_comm_device())
    torch.distributed.all_reduce(tensor)
    return tensor.to(device)


def active() -> bool:
    return (torch.distributed.is_available() and torch.distributed.is_initialized()
            and torch.distributed.get_world_size() > 1)


def gather_rows(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Every rank's rows, concatenated in rank order (ranks may hold different counts)."""
    if not active():
        return tensors
    device = _comm_device()
    n = torch.tensor([len(tensors[0])], device=device)
    counts = [torch.zeros_like(n) for _ in range(torch.distributed.get_world_size())]
    torch.distributed.all_gather(counts, n)
    longest = int(max(c.item() for c in counts))
    out = []
    for t in tensors:
        padded = torch.zeros((longest, *t.shape[1:]), dtype=t.dtype, device=device)
        padded[:len(t)] = t.to(device)
        parts = [torch.empty_like(padded) for _ in counts]
        torch.distributed.all_gather(parts, padded)
        out.append(torch.cat([p[:int(c.item())] for p, c in zip(parts, counts)]).cpu())
    return tuple(out)


def _comm_device() -> torch.device:
    """Where collectives' tensors must live: the rank's GPU under nccl, else the CPU."""
    if torch.distributed.is_initialized() and torch.distributed.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


@contextmanager
def _fsdp_no_sync(model):
    model.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        model.set_requires_gradient_sync(True)


def launched_world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def resume_command(out) -> str:
    """The command that resumes the run in `out` the way it was started: one process and
    --devices runs resume with plain `lmtune train` (a --devices run relaunches itself), runs
    under torchrun or accelerate launch need their launcher and process count again."""
    if launched_world_size() > 1 and RESULT_ENV not in os.environ:
        per_node = os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("WORLD_SIZE"))
        nodes = int(os.environ["WORLD_SIZE"]) // max(1, int(per_node))
        more = f" --nnodes {nodes} ..." if nodes > 1 else ""
        return (f"torchrun --nproc_per_node {per_node}{more} -m lmtune train --resume "
                f"--out {out}")
    return f"lmtune train --resume --out {out}"


def start(cfg) -> World:
    """The world this process belongs to; joins the process group when a launcher started
    several processes."""
    from lmtune.device import pick_device

    size, fsdp = launched_world_size(), cfg.fsdp
    several = size > 1 or cfg.devices > 1
    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true":
        raise UserError("accelerate's own FSDP settings are not used by lmtune",
                        hint="launch without accelerate's --use_fsdp (or fsdp_config) and pass "
                             "--fsdp to lmtune train")
    if fsdp and not several:
        raise UserError("--fsdp shards the model over several processes, and this run has "
                        "one", hint="add --devices N, or launch with torchrun "
                                    "--nproc_per_node N -m lmtune train ... --fsdp")
    if cfg.dry_run and size > 1:  # --devices with --dry-run is refused by check_train
        raise UserError("--dry-run times steps on one process",
                        hint="run it without a launcher")
    if size == 1:  # one process, or the one that starts the others for --devices
        return World()
    if cfg.devices > 1 and cfg.devices != size and not cfg.resume:
        raise UserError(f"--devices {cfg.devices}, but the launcher started {size} processes",
                        hint="under torchrun or accelerate launch, drop --devices: the "
                             "launcher sets the number of processes")
    device = pick_device(cfg.device)
    from accelerate import PartialState

    # accelerate picks the backend: nccl when the ranks have GPUs, gloo on the CPU.
    state = PartialState(cpu=device == "cpu", timeout=TIMEOUT)
    if state.num_processes != size:
        raise UserError(f"WORLD_SIZE is {size} but the process group has "
                        f"{state.num_processes} processes",
                        hint="launch with torchrun or accelerate launch, which set both")
    return World(rank=state.process_index, size=state.num_processes,
                 local_rank=state.local_process_index, fsdp=fsdp)


def seed_ranks(world: World, seed: int) -> None:
    """After the model is built (every rank builds the same one): ranks draw different
    dropout masks, as different samples of the same batch would in one process."""
    if world.active:
        torch.manual_seed(seed + 1_000_003 * world.rank)


def close() -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        # The model, optimizer and FSDP state of the run may sit in reference cycles; freed
        # only at interpreter exit, after the group is gone, they aborted a 2-process FSDP run
        # once in about five ("terminate called without an active exception", exit 134).
        gc.collect()
        torch.distributed.destroy_process_group()
