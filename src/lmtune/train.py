"""The training loop, top to bottom: setup -> fit -> validate -> save.

`train()` is what both `lmtune train` and `lmtune.train(...)` call. It reports progress
through `on_event(name, data)` (the CLI turns events into a progress bar and messages) and
returns a `TrainResult`; it prints nothing itself.
"""

from __future__ import annotations

import dataclasses
import errno
import math
import signal
import threading
import time
import warnings
from contextlib import nullcontext
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Callable

import torch

from lmtune import checkpoint, config as config_mod, distributed, optim, resume
from lmtune.activations import use_fused_gelu
from lmtune.config import TrainConfig
from lmtune.errors import UserError
from lmtune.fast_dropout import use_fast_dropout
from lmtune.flops import flops_per_token, peak_flops
from lmtune.generate import generate
from lmtune.memorization import LazyIndex, copy_summary
from lmtune.methods import (apply_method, count_parameters, keep_lora_inputs_in_autocast_dtype,
                            store_frozen_in)
from lmtune.models import context_length, load_tokenizer, num_layers, resolve
from lmtune.packed_attention import prefer_eager_attention, use_packed_attention
from lmtune.plan import check_numbers
from lmtune.report import report_at_end
from lmtune.runs import (JsonlWriter, RunLock, check_out, clean_partial_artifacts, clear_run,
                         default_out, drop_records_after, run_info, save_artifact)
from lmtune.runtime import pick_device, pick_precision, set_threads, torch_dtype
from lmtune.step_memory import cpu_step_memory, release_step_buffers
from lmtune.tasks import task_for

ONE_SHOT_ACTIONS = ("resume", "force_resume", "overwrite", "dry_run")  # saved as False
MAX_BAD_STEPS = 5
EAGER_MAX_BLOCK = 512  # see packed_attention.prefer_eager_attention


class Interrupted(UserError):
    exit_code = 130


@dataclass
class TrainResult:
    out: Path
    final: Path
    steps: int
    train_loss: float | None
    val_loss: float | None
    best_val_loss: float | None  # --task generate; None for classify
    best_step: int | None
    stopped: str  # "completed", "patience"
    task: str = "generate"
    best_metric: str = "val_loss"  # what picked the best checkpoint: val_loss or macro_f1
    best_score: float | None = None  # its value at best_step
    metrics: dict | None = None  # the last evaluation record (classify: accuracy, macro_f1...)


def _emit_nothing(event: str, data: dict) -> None:
    pass


def train(config: TrainConfig | None = None, *, config_file: str | None = None,
          on_event: Callable[[str, dict], None] | None = None, **overrides) -> TrainResult:
    """Fine-tune a model. Pass a `TrainConfig`, or option names as keyword arguments
    (`train("jokes.txt", method="lora", epochs=2)`), optionally over a YAML `config_file`."""
    emit = on_event or _emit_nothing
    if config is None:
        config = config_mod.build_train(overrides, config_file)
    cfg = config
    task = task_for(cfg)
    problems = check_numbers(cfg) + task.check(cfg)
    if problems:
        raise UserError("; ".join(problems))
    world = distributed.start(cfg)
    # Every rank writes (through rank 0) to rank 0's folder: a default name holds the time.
    out = world.same_path(Path(cfg.out) if cfg.out else default_out(cfg.data))
    # The folder checks run before the model is resolved: resolving the default model may
    # convert it first (about 20 s), and a wrong --out should not wait for that.
    check_out(out, resume=cfg.resume, overwrite=cfg.overwrite, model_path=cfg.model,
              data_path=cfg.data)
    if cfg.devices > 1 and not world.active:
        from lmtune.launch import relaunch
        # this same train() on cfg.devices processes, under torchrun
        return relaunch(dataclasses.replace(cfg, out=str(out)))
    if not world.is_main:
        emit = _emit_nothing  # one progress bar and one set of messages: rank 0's
    world.local_main_first_begin()  # converting the default model and tokenizing: once
    resolved = resolve(cfg.model)
    if resolved.adapter is not None:
        raise UserError(f"--model {cfg.model} is a LoRA adapter",
                        hint=f"merge it first (lmtune merge {cfg.model} --out DIR) and train "
                             f"from the merged folder")

    # --- data: read and tokenize everything before the model loads or anything is written;
    # the task makes the batches and the step plan (tasks.py: generate; classify.py)
    tokenizer = load_tokenizer(resolved, cfg.trust_remote_code)
    model_config = _peek_config(resolved, cfg.trust_remote_code)
    data = task.prepare(cfg, tokenizer, context=context_length(model_config),
                        n_layers=_config_layers(model_config), world=world.size)
    world.local_main_first_end()
    cfg, plan, train_set, val_set = data.cfg, data.plan, data.train_set, data.val_set
    cfg = dataclasses.replace(cfg, model=cfg.model or config_mod.DEFAULT_MODEL, out=str(out))
    data_hash = data.data_hash
    start, changes = resume.find_start(out, cfg, data_hash) if cfg.resume else (None, [])
    if start is not None:
        world.check_resume(checkpoint.read_state(start), out)

    # --- model, method, precision
    set_threads()
    device = pick_device(cfg.device)
    precision = pick_precision(cfg.precision, device)
    torch.manual_seed(cfg.seed)
    model = task.load_model(resolved, cfg, tokenizer)
    if device == "cpu" and not use_packed_attention(model) \
            and plan.block_size <= EAGER_MAX_BLOCK:
        prefer_eager_attention(model)
    if start is not None and cfg.method != "lora":
        resume.load_weights(model, start / "model")
    model = apply_method(model, cfg)
    use_fused_gelu(model)
    if device == "cpu":
        use_fast_dropout(model)
    if start is not None and cfg.method == "lora":
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file
        set_peft_model_state_dict(model, load_file(start / "model" / "adapter_model.safetensors"))
    model.config.use_cache = False
    if cfg.method == "lora" and precision in ("bf16", "fp16"):
        store_frozen_in(model, torch_dtype(precision))
        keep_lora_inputs_in_autocast_dtype(model)
    trainable, total = count_parameters(model)
    accelerator = _accelerator(device, precision)
    if world.fsdp:  # sharded in place; accelerate's prepare would wrap it in DDP as well
        model = world.wrap_fsdp(model)
        optimizer = accelerator.prepare(optim.adamw(model, cfg, device))
    else:
        optimizer = optim.adamw(model, cfg, device)
        model, optimizer = accelerator.prepare(model, optimizer)
    distributed.seed_ranks(world, cfg.seed)
    scheduler = optim.lr_schedule(optimizer, cfg, plan.total_steps)
    # best_score is the task's best_metric (val_loss for generate, macro_f1 for classify) at
    # best_step; best_rank is what picked that step (task.rank: lower is better).
    state = {"step": 0, "tokens": 0, "best_score": None, "best_rank": None, "best_step": None,
             "bad_evals": 0, "skipped_steps": 0, "data_hash": data_hash,
             "world_size": world.size}
    if start is not None:
        state.update(checkpoint.read_state(start), data_hash=data_hash)  # new if forced
        world.load_optimizer(start, model, optimizer)
        with warnings.catch_warnings():  # torch warns when stepping before optimizer.step()
            warnings.simplefilter("ignore")
            for _ in range(state["step"]):  # the schedule is a pure function of the step
                scheduler.step()
    # A run whose steps are done but whose final/ save failed (a full disk, a kill) resumes
    # into no steps at all: final/ and the report are written from the last checkpoint.
    if state["step"] >= plan.total_steps and resume.final_is_current(out, start):
        raise UserError(f"{out} already trained {state['step']} steps",
                        hint="raise --max-steps or --epochs to train further")

    emit("start", {"out": str(out), "model": cfg.model, "method": cfg.method,
                   "trainable": trainable, "total": total, "device": device,
                   "precision": precision, **data.summary, "task": task.name,
                   "block_size": plan.block_size, "batch_size": plan.batch_size,
                   "grad_accum": cfg.grad_accum, "tokens_per_step": plan.tokens_per_step,
                   "world_size": world.size,
                   "global_batch": plan.batch_size * cfg.grad_accum * world.size,
                   "steps_per_epoch": plan.steps_per_epoch, "total_steps": plan.total_steps,
                   "start_step": state["step"], "lr": cfg.lr})
    for text in data.messages:
        emit("message", {"text": text})
    for change in changes:
        emit("message", {"text": f"--force-resume: {change}"})
    # One CPU process: the step's vocabulary-sized buffers are kept (step_memory.py).
    keep_buffers = cpu_step_memory(model) if device == "cpu" and world.size == 1 else nullcontext()
    if cfg.dry_run:  # the plan above, a data report and a few timed steps; nothing is written
        from lmtune.dryrun import dry_run
        with keep_buffers:  # timed as training runs
            return dry_run(cfg, plan, model, optimizer, accelerator, train_set, val_set,
                           tokenizer, precision, task)

    # --- the run folder: created only now that every input has been checked
    out.mkdir(parents=True, exist_ok=True)
    with RunLock(out) if world.is_main else nullcontext():  # rank 0 alone writes the run
        if world.is_main:
            if cfg.overwrite and not cfg.resume:
                clear_run(out)
            checkpoint.clean_partial(out / "checkpoints")
            clean_partial_artifacts(out)
            if start is not None:
                # After a crash the logs run past the checkpoint; those steps run again.
                for name in ("metrics.jsonl", "samples.jsonl"):
                    drop_records_after(out / name, state["step"])
            # The file describes the run, not the command that last touched it: one-shot
            # actions are saved off, so `--config RUN/config.yaml` starts a like run instead
            # of resuming or overwriting, and a later plain --resume (which starts from this
            # file) checks its settings again instead of inheriting --force-resume.
            saved = dataclasses.replace(cfg, **{name: False for name in ONE_SHOT_ACTIONS})
            (out / "config.yaml").write_text(config_mod.to_yaml(saved), encoding="utf-8")
        info = {**run_info(cfg, _base_name(cfg.model, resolved)), **task.info()}
        stop = _StopFlag()
        stop.install()
        try:
            with keep_buffers:
                return _fit(cfg, plan, out, model, tokenizer, optimizer, scheduler, accelerator,
                            train_set, val_set, state, info, emit, start, stop, task, world)
        except OSError as e:
            if e.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            raise UserError(f"disk full while writing {e.filename or out}: {e.strerror}",
                            hint=f"free disk space, then resume with: "
                                 f"{distributed.resume_command(out)}") from None
        finally:
            stop.restore()


def _fit(cfg, plan, out, model, tokenizer, optimizer, scheduler, accelerator, train_set,
         val_set, state, info, emit, start, stop, task, world) -> TrainResult:
    device = accelerator.device
    writer = JsonlWriter if world.is_main else _NoWriter
    metrics, samples_log = writer(out / "metrics.jsonl"), writer(out / "samples.jsonl")
    train_share = world.shard(train_set)
    val_share = None if val_set is None else world.shard(val_set)
    params = [p for p in model.parameters() if p.requires_grad]
    unwrapped = accelerator.unwrap_model(model)
    precision = {"no": "fp32"}.get(accelerator.mixed_precision, accelerator.mixed_precision)
    peak = peak_flops(device.type, precision)
    n_trainable, n_params = count_parameters(unwrapped)
    flops_tok = flops_per_token(n_params, n_trainable)
    copies = LazyIndex(getattr(train_set, "docs", None), tokenizer)  # built at the first sample

    def evaluate_now(step: int) -> dict | None:
        """The task's metrics record (val_loss, and accuracy, macro_f1 ... for classify)."""
        if val_set is None:
            return None
        record = {"step": step, **task.evaluate(model, val_share, plan.batch_size, device,
                                                accelerator.autocast)}
        metrics.write(record)
        emit("eval", record)
        return record

    def sample_now(step: int) -> None:
        # Under FSDP every rank takes part in each forward (the weights are sharded).
        if not cfg.sample_every or not (world.is_main or world.fsdp):
            return
        with accelerator.autocast():
            got = generate(unwrapped, tokenizer, cfg.sample_prompts or None, n=1,
                           max_new_tokens=cfg.sample_max_new_tokens, seed=cfg.seed + step,
                           synced=world.fsdp)
        if not world.is_main:
            return
        # Memorisation: each sample against the training data; the copy rate goes to metrics.
        checks = [copies.check(s.prompt, s.text) for s in got]
        for s, check in zip(got, checks):
            record = {"step": step, "prompt": s.prompt, "text": s.text, **check.to_dict()}
            samples_log.write(record)
            emit("sample", record)
        metrics.write(copy_summary(step, checks))

    def save_now(step: int) -> None:
        # Skipped updates keep NaN out of the weights; this catches what still got in (an
        # overflow inside the optimizer), so no checkpoint ever holds a non-finite weight.
        if not checkpoint.all_finite(params):
            raise UserError(f"the weights became non-finite at step {step}; no checkpoint "
                            f"was written for it", hint="lower --lr, or use --precision fp32 "
                                                        "or bf16 instead of fp16; resume from "
                                                        "the last checkpoint with --resume")
        gathered = world.full_state(model, optimizer)  # every rank's part, on rank 0
        if world.is_main:
            path = checkpoint.save(
                out / "checkpoints", step, optimizer=optimizer, keep=cfg.keep,
                best_step=state["best_step"], state=dict(state, step=step),
                save_model=lambda folder: save_artifact(folder, unwrapped, tokenizer, info,
                                                        state_dict=gathered.weights),
                optimizer_state=gathered.optimizer, rng=gathered.rng)
            emit("checkpoint", {"step": step, "path": str(path)})
        # No rank runs ahead (or exits on a stop) while rank 0 still writes the checkpoint.
        world.barrier()

    if start is not None:
        world.restore_rng(start)  # after model set-up, which draws LoRA init from the RNG
    model.train()
    step = state["step"]
    window_loss = torch.zeros((), device=device)
    window_targets, window_tokens, window_t0 = 0, 0, time.perf_counter()
    last_train_loss, val_loss, last_eval, stopped = None, None, None, "completed"
    bad_in_row = 0
    emit("progress", {"step": step, "total": plan.total_steps})
    while step < plan.total_steps:
        epoch, in_epoch = divmod(step, plan.steps_per_epoch)
        batches = train_share.batches(epoch, plan.batch_size, start=in_epoch * cfg.grad_accum)
        while in_epoch < plan.steps_per_epoch and step < plan.total_steps:
            micro = list(islice(batches, cfg.grad_accum))
            n_targets, real_tokens = world.step_counts(micro)  # over all ranks
            n_targets = max(1, n_targets)
            # DDP and FSDP average the ranks' gradients, so each rank divides by its share
            # of the step's target tokens: the update is the sum over all of them / n_targets.
            share = n_targets / world.size
            step_loss = torch.zeros((), device=device)
            for i, batch in enumerate(micro):
                sync = i == len(micro) - 1
                with nullcontext() if sync else world.no_sync(model, accelerator):
                    # The loss runs under autocast too: accelerate covers only the model's
                    # forward, and the chunked LM head (loss.py) runs outside it, where fp32
                    # matmuls made a small-model step 1.4x slower.
                    with accelerator.autocast():
                        loss = task.loss_sum(model, batch, device) / share
                    accelerator.backward(loss)
                step_loss += loss.detach()
            # One host sync per step: a non-finite gradient must skip the update, never
            # reach the weights (and so never a checkpoint).
            grad_norm = optim.clip_gradients(accelerator, params, cfg.grad_clip or float("inf"),
                                              sharded=world.fsdp)
            if not math.isfinite(grad_norm):
                optimizer.zero_grad(set_to_none=True)
                state["skipped_steps"] += 1
                bad_in_row += 1
                if bad_in_row >= MAX_BAD_STEPS:
                    raise UserError(f"the loss was not finite for {bad_in_row} steps in a row "
                                    f"(step {step + 1})", hint="lower --lr, or use --precision "
                                                                "fp32 or bf16 instead of fp16")
                emit("message", {"text": f"step {step + 1}: non-finite gradient, update "
                                         f"skipped"})
            else:
                bad_in_row = 0
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            step_lr = scheduler.get_last_lr()[0]  # the rate this step used; step() moves on
            scheduler.step()
            step += 1
            in_epoch += 1
            window_loss += step_loss * share  # this rank's loss sum
            window_targets += n_targets
            window_tokens += real_tokens
            state["tokens"] += real_tokens
            last = step == plan.total_steps
            if step % cfg.log_every == 0 or last:
                elapsed = time.perf_counter() - window_t0
                # host sync (and an all-reduce under several processes): log steps only
                last_train_loss = world.sum(window_loss).item() / window_targets
                record = {"step": step, "epoch": round(step / plan.steps_per_epoch, 4),
                          "loss": round(last_train_loss, 6),
                          "lr": step_lr, "tokens": state["tokens"],
                          "tokens_per_s": round(window_tokens / max(elapsed, 1e-9), 1),
                          "grad_norm": round(float(grad_norm), 4)}
                if peak:
                    record["mfu"] = round(record["tokens_per_s"] * flops_tok
                                          / (peak * world.size), 4)
                if state["skipped_steps"]:  # updates skipped for a non-finite gradient so far
                    record["skipped_steps"] = state["skipped_steps"]
                metrics.write(record)
                emit("log", record)
                window_loss.zero_()
                window_targets, window_tokens, window_t0 = 0, 0, time.perf_counter()
            emit("progress", {"step": step, "total": plan.total_steps})
            if world.active:  # every rank stops after the same step
                stop.signum = world.agree_on_signal(stop.signum)
            side_t0 = time.perf_counter()  # evaluation, samples and saves are not training speed
            if step % cfg.eval_every == 0 or last or stop.signum:
                evaluated = evaluate_now(step)
                if evaluated is not None:
                    val_loss, last_eval = evaluated["val_loss"], evaluated
                    rank, best = task.rank(evaluated), state["best_rank"]
                    if best is None or rank < best:  # lists: compared item by item
                        state["best_rank"], state["best_step"] = rank, step
                        state["best_score"] = evaluated[task.best_metric]
                        state["bad_evals"] = 0
                    else:
                        state["bad_evals"] += 1
            if cfg.sample_every and (step % cfg.sample_every == 0 or last):
                sample_now(step)
            if stop.signum or last or step % cfg.save_every == 0 or (
                    cfg.patience and state["bad_evals"] >= cfg.patience):
                save_now(step)
            window_t0 += time.perf_counter() - side_t0
            if stop.signum:
                name = signal.Signals(stop.signum).name
                raise Interrupted(f"stopped by {name} at step {step}; checkpoint saved in "
                                  f"{out / 'checkpoints' / checkpoint.step_name(step)}",
                                  hint=f"resume with: {distributed.resume_command(out)}")
            if cfg.patience and state["bad_evals"] >= cfg.patience:
                stopped = "patience"
                emit("message", {"text": f"stopping early: no better {task.best_metric} in "
                                         f"{cfg.patience} evaluations"})
                break
        if stopped != "completed":
            break
    # Training is over and its last checkpoint written: the optimizer's state (two fp32 copies
    # of every trainable weight) and the step's buffers go before final/ and the report are
    # made, so those do not add to the run's peak memory.
    optimizer.state.clear()
    release_step_buffers()
    final = out / "final"
    weights = world.full_weights(model)  # FSDP: gathered on rank 0
    if world.is_main:
        save_artifact(final, unwrapped, tokenizer, info, state_dict=weights)
    emit("end", {"final": str(final), "step": step})
    if cfg.report and world.is_main:  # loss.png, report.html, before/after samples
        # Under FSDP the tuned model is in shards; the report loads it from final/.
        report_at_end(out, None if world.fsdp else unwrapped, tokenizer, device,
                      accelerator.autocast, emit)
    world.barrier()  # when train() returns, final/ is complete for every rank
    is_loss = task.best_metric == "val_loss"
    return TrainResult(out=out, final=final, steps=step, train_loss=last_train_loss,
                       val_loss=val_loss, best_val_loss=state["best_score"] if is_loss else None,
                       best_step=state["best_step"], stopped=stopped, task=task.name,
                       best_metric=task.best_metric, best_score=state["best_score"],
                       metrics=last_eval)


# ---------------------------------------------------------------------------------------------
# Set-up helpers.

def _peek_config(resolved, trust_remote_code: bool):
    from transformers import AutoConfig
    return AutoConfig.from_pretrained(resolved.path, trust_remote_code=trust_remote_code)


def _config_layers(model_config) -> int:
    class _Shim:
        config = model_config
    try:
        return num_layers(_Shim)
    except UserError:
        return 4


def _base_name(spec: str, resolved) -> str:
    """What lmtune.json records as the base: the default's name, a hub id, or an absolute
    path for a local folder (so the run still loads from another working directory)."""
    p = Path(spec).expanduser()
    return str(p.resolve()) if p.exists() else spec


def _accelerator(device: str, precision: str):
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    # accelerate keeps one global state; a second train() in the same process (tests, the
    # Python API in a notebook) may use another precision, so reset it first.
    AcceleratorState._reset_state()
    mixed = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}[precision]
    return Accelerator(mixed_precision=mixed, cpu=device == "cpu")


class _NoWriter:
    """What ranks other than 0 log to."""

    def __init__(self, path: Path):
        pass

    def write(self, record: dict) -> None:
        pass


class _StopFlag:
    """SIGTERM or a first Ctrl-C: finish the step, save, exit. A second Ctrl-C: stop now."""

    def __init__(self):
        self.signum: int | None = None
        self.old: dict = {}

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for s in (signal.SIGINT, signal.SIGTERM):
            self.old[s] = signal.signal(s, self._handle)

    def _handle(self, signum, frame) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum

    def restore(self) -> None:
        for s, handler in self.old.items():
            signal.signal(s, handler)
        self.old = {}
