"""Everything a run needs before its first step, built in the order that fails fastest: the
model's config and the flags that depend on it, then the data (read and tokenized before any
weight loads), then the model, its method, precision, optimizer and schedule.

`build()` returns a `Setup`; the loop (loop.py), the step (step.py) and the dry run
(dryrun.py) all work from it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch

from lmtune.config import DEFAULT_MODEL, TrainConfig, check_against_model, refuse
from lmtune.device import (pick_device, pick_precision, precision_warning, set_threads,
                           torch_dtype)
from lmtune.distributed import World, seed_ranks
from lmtune.errors import UserError
from lmtune.fast import speedups
from lmtune.models.load import (checkpoint_layers, config_layers, context_length,
                                 load_tokenizer, peek_config)
from lmtune.models.resolve import Resolved, resolve
from lmtune.run.artifact import run_info
from lmtune.run.checkpoint import read_state
from lmtune.run.folder import RunFolder
from lmtune.run.resume import find_start
from lmtune.tasks.base import TaskData
from lmtune.tasks.plan import Plan
from lmtune.training import optim
from lmtune.training.methods import METHODS, EmbeddingWarmup, count_parameters
from lmtune.training.unread_rows import UnreadRows
from lmtune.vocab.cached import extended_for_training, untrained_rows


@dataclass
class Setup:
    cfg: TrainConfig            # with everything the data and the model decide filled in
    task: object                # tasks/: the loss, the evaluation, what lmtune.json records
    data: TaskData
    world: World
    resolved: Resolved
    tokenizer: object
    model: object               # as accelerate prepared it (DDP or FSDP under several ranks)
    unwrapped: object           # the model as trained (PEFT or transformers), for saving
    method: object              # training/methods.py
    optimizer: object
    scheduler: object
    accelerator: object
    device: str
    precision: str
    params: list = dataclasses.field(default_factory=list)  # the trainable weights (below)
    fast: speedups | None = None  # entered around the steps (train.py)
    start: Path | None = None   # the checkpoint a --resume starts from
    changes: list[str] = dataclasses.field(default_factory=list)  # what --force-resume allowed
    threads: object = None      # cpu.ThreadBudget: printed at start, kept in metrics.jsonl
    warnings: list[str] = dataclasses.field(default_factory=list)  # for the start messages
    warmup: EmbeddingWarmup | None = None  # --warmup-embeddings (methods.py)
    unread: UnreadRows | None = None  # an extended vocabulary's unread rows (unread_rows.py)

    @property
    def plan(self) -> Plan:
        return self.data.plan

    def run_info(self) -> dict:
        """What final/lmtune.json records besides the task's keys: the base model (with
        --extend-tokenizer the extended folder, which a LoRA adapter needs under it) and,
        for an extended run, what the extension gained (the report shows it)."""
        if not self.cfg.extend_tokenizer:
            return run_info(self.cfg, base_name(self.cfg.model))
        extension = (self.resolved.info or {}).get("tokenizer_extension", {})
        return {**run_info(self.cfg, self.resolved.path), "tokenizer_extension": extension}


def build(cfg: TrainConfig, task, world: World, run: RunFolder) -> Setup:
    resolved, tokenizer, data = prepare_data(cfg, task, world)
    cfg = dataclasses.replace(data.cfg, model=cfg.model or DEFAULT_MODEL, out=str(run.path))
    start, changes = find_start(run.path, cfg, data.data_hash) if cfg.resume else (None, [])
    if start is not None:
        world.check_resume(read_state(start), run.path)
    threads = set_threads(cfg.threads)
    device = pick_device(cfg.device)
    precision = pick_precision(cfg.precision, device)
    warning = precision_warning(precision, device)
    torch.manual_seed(cfg.seed)
    method = METHODS[cfg.method]
    # The new rows of an extension train whether this run made it (--extend-tokenizer) or
    # --model names a folder `lmtune tokenizer extend` wrote: under LoRA they would otherwise
    # stay at their averaged start.
    new_rows = untrained_rows(resolved.info) if task.name != "classify" else []
    model = method.apply(task.load_model(resolved, cfg, tokenizer), cfg, new_rows=new_rows)
    if start is not None:
        method.restore(model, start / "model")
    model.config.use_cache = False
    if cfg.gradient_checkpointing:
        checkpoint_layers(model)
    method.for_precision(model, None if precision == "fp32" else torch_dtype(precision))
    fast = speedups(model, device=device, block_size=data.plan.block_size,
                    one_process=world.size == 1)
    accelerator = _accelerator(device, precision)
    if world.fsdp:  # sharded in place; accelerate's prepare would wrap it in DDP as well
        model = world.wrap_fsdp(model)
        optimizer = accelerator.prepare(optim.adamw(model, cfg, device))
    else:
        optimizer = optim.adamw(model, cfg, device)
        model, optimizer = accelerator.prepare(model, optimizer)
    seed_ranks(world, cfg.seed)
    scheduler = optim.lr_schedule(optimizer, cfg, data.plan.total_steps)
    # Listed once, before any forward: FSDP2 registers unsharded stand-ins while a module
    # runs (the root's stay after its forward), and the clipping and the finiteness check
    # must see the sharded weights the optimizer updates.
    params = [p for p in model.parameters() if p.requires_grad]
    return Setup(cfg=cfg, task=task, data=dataclasses.replace(data, cfg=cfg), world=world,
                 resolved=resolved, tokenizer=tokenizer, model=model,
                 unwrapped=accelerator.unwrap_model(model), method=method,
                 optimizer=optimizer, scheduler=scheduler, accelerator=accelerator,
                 device=device, precision=precision, fast=fast, start=start, changes=changes,
                 threads=threads, params=params,
                 warnings=[w for w in (warning, _extension_note(resolved, cfg, data, new_rows))
                           if w],
                 warmup=EmbeddingWarmup(accelerator.unwrap_model(model), params,
                                        cfg.warmup_embeddings),
                 unread=UnreadRows(accelerator.unwrap_model(model), new_rows,
                                   sharded=world.fsdp))


def prepare_data(cfg: TrainConfig, task, world: World) -> tuple[Resolved, object, TaskData]:
    """The model's name resolved, its config checked against the flags, and the data read and
    tokenized by the task. On several ranks, the first of each machine goes first (converting
    the default model and tokenizing into the cache happen once), the others then find the
    files ready."""
    world.local_main_first_begin()
    resolved = resolve(cfg.model)
    if resolved.adapter is not None:
        raise UserError(f"--model {cfg.model} is a LoRA adapter",
                        hint=f"merge it first (lmtune merge {cfg.model} --out DIR) and train "
                             f"from the merged folder")
    model_config = peek_config(resolved, cfg.trust_remote_code)
    context, n_layers = context_length(model_config), config_layers(model_config)
    refuse(check_against_model(cfg, context=context, n_layers=n_layers))
    if cfg.extend_tokenizer:  # the data is tokenized, and the model loaded, extended
        resolved = extended_for_training(resolved, cfg)
    tokenizer = load_tokenizer(resolved, cfg.trust_remote_code)
    data = task.prepare(cfg, tokenizer, context=context, n_layers=n_layers, world=world.size)
    world.local_main_first_end()
    return resolved, tokenizer, data


def _extension_note(resolved: Resolved, cfg: TrainConfig, data: TaskData,
                    new_rows: list[int]) -> str | None:
    """What an extension whose rows this run trains gained, and how often it reads them."""
    if not new_rows:
        return None
    ext = resolved.info["tokenizer_extension"]
    gain = (f"{ext['chars_per_token_before']:.2f} -> {ext['chars_per_token_after']:.2f} "
            f"characters per token")
    head = (f"tokenizer extended on {Path(cfg.data).name}: {ext['added']:,} new pieces, {gain} "
            f"(model kept in {resolved.path})" if cfg.extend_tokenizer else
            f"the model's tokenizer was extended by {ext['added']:,} pieces ({gain} on "
            f"{Path(ext['corpus']).name}); their rows train too")
    return head + _new_piece_reads(ext, data)


RARE_READS = 10  # a piece read fewer times than this in a run keeps most of its averaged start


def _new_piece_reads(ext: dict, data: TaskData) -> str:
    """How often this run reads its new pieces: a new row learns only from the
    steps that contain its piece, so a short run over many new pieces leaves most of them
    near their averaged start (issue 21: 100 steps over 20,000 pieces read the median piece
    less than once, and the samples fell back on the old tokens)."""
    import numpy as np

    docs, plan = getattr(data.train_set, "docs", None), data.plan
    if docs is None or not plan.steps_per_epoch:
        return ""
    # Selected in the stored (possibly unsigned) dtype first: no int64 copy of the corpus.
    first, added = ext["first_id"], ext["added"]
    new = docs.ids[(docs.ids >= first) & (docs.ids < first + added)]
    counts = np.bincount(new.astype(np.int64) - first, minlength=added)
    reads = counts * (plan.total_steps / plan.steps_per_epoch)
    rare = int((reads < RARE_READS).sum())
    note = f"; this run reads the median new piece {np.median(reads):.1f} times"
    if rare > added // 2:
        note += (f" and {rare:,} of them fewer than {RARE_READS} times, so those stay near "
                 f"their averaged start: train longer, or add fewer (--extend-tokenizer)")
    return note


def base_name(spec: str) -> str:
    """What lmtune.json records as the base: the default's name, a hub id, or an absolute
    path for a local folder (so the run still loads from another working directory)."""
    p = Path(spec).expanduser()
    return str(p.resolve()) if p.exists() else spec


def parameter_counts(setup: Setup) -> tuple[int, int]:
    return count_parameters(setup.unwrapped)


def _accelerator(device: str, precision: str):
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    # accelerate keeps one global state; a second train() in the same process (tests, the
    # Python API in a notebook) may use another precision, so reset it first.
    AcceleratorState._reset_state()
    mixed = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}[precision]
    return Accelerator(mixed_precision=mixed, cpu=device == "cpu")
