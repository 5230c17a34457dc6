"""The loop, top to bottom: step, log, validate, sample, save; then the final model.

`fit` runs from `LoopState` (what a checkpoint saves as state.json) until the planned steps are
done, patience runs out or a signal asks it to stop. Each side task asks `Intervals` whether
this step is its step, and is a function of its own below.
"""

from __future__ import annotations

import dataclasses
import signal
import time
from dataclasses import dataclass
from itertools import islice

import torch

from lmtune.analysis.memorization import LazyIndex, copy_summary
from lmtune.analysis.report import report_at_end
from lmtune.cpu import CoreWatch
from lmtune.distributed import resume_command
from lmtune.errors import Stopped, UserError
from lmtune.models.generate import generate
from lmtune.run import checkpoint
from lmtune.run.artifact import save_artifact
from lmtune.run.folder import JsonlWriter, NoWriter, RunFolder
from lmtune.training.flops import flops_per_token, peak_flops
from lmtune.training.result import Interrupted, TrainResult
from lmtune.training.setup import Setup, parameter_counts
from lmtune.training import step as step_module
from lmtune.training.step import StepResult

MAX_BAD_STEPS = 5  # non-finite gradients in a row before the run gives up


@dataclass
class LoopState:
    """Where the run is: saved in every checkpoint as state.json, and read back on resume."""
    step: int = 0
    tokens: int = 0
    best_score: float | None = None  # the task's best_metric (val_loss, macro_f1) at best_step
    best_rank: list | None = None    # what picked best_step (task.rank: lower is better)
    best_step: int | None = None
    bad_evals: int = 0               # evaluations in a row without a better rank (patience)
    skipped_steps: int = 0           # updates skipped for a non-finite gradient
    data_hash: str = ""
    world_size: int = 1
    total_steps: int | None = None   # what the schedule spanned (None: an older checkpoint)
    # The steps since the last metrics record, so a run resumed between two log steps logs
    # the same loss as a run never stopped (the loss summed over every rank).
    window_loss: float = 0.0
    window_targets: int = 0
    window_tokens: int = 0
    window_seconds: float = 0.0
    window_stats: dict = dataclasses.field(default_factory=dict)  # the task's sums (step.py)

    @classmethod
    def from_saved(cls, saved: dict, **updates) -> "LoopState":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{**{k: v for k, v in saved.items() if k in names}, **updates})

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def initial_state(setup: Setup) -> LoopState:
    """A new run's state, or the checkpoint's on --resume, with the optimizer, the schedule
    and (later, in fit) the random state put back where they were."""
    state = LoopState(data_hash=setup.data.data_hash, world_size=setup.world.size,
                      total_steps=setup.plan.total_steps)
    if setup.start is None:
        return state
    # The data hash is the current one: new if --force-resume accepted other data.
    state = LoopState.from_saved(checkpoint.read_state(setup.start),
                                 data_hash=setup.data.data_hash)
    try:
        setup.world.load_optimizer(checkpoint.read_optimizer(setup.start), setup.model,
                                   setup.optimizer)
    except (ValueError, KeyError, RuntimeError) as e:  # --force-resume onto another model
        raise UserError(f"the optimizer state of {setup.start} does not fit this run "
                        f"({str(e).splitlines()[0][:200]})",
                        hint="resume with the run's own settings") from None
    import warnings
    with warnings.catch_warnings():  # torch warns when stepping before optimizer.step()
        warnings.simplefilter("ignore")
        for _ in range(state.step):  # the schedule is a pure function of the step
            setup.scheduler.step()
    return state


class Intervals:
    """Whether a step is a step to log, validate, sample or save at (torchtitan's way: ask
    the owner of the interval, rather than test modulos inline)."""

    def __init__(self, cfg, total_steps: int):
        self.cfg, self.total = cfg, total_steps
        self.saved_at = time.monotonic()  # the run's start counts as a save

    def last(self, step: int) -> bool:
        return step == self.total

    def log(self, step: int) -> bool:
        return step % self.cfg.log_every == 0 or self.last(step)

    def evaluate(self, step: int) -> bool:
        return step % self.cfg.eval_every == 0 or self.last(step)

    def sample(self, step: int) -> bool:
        return bool(self.cfg.sample_every) and (step % self.cfg.sample_every == 0
                                                or self.last(step))

    def save(self, step: int) -> bool:
        due = (step % self.cfg.save_every == 0
               and time.monotonic() - self.saved_at >= 60 * (self.cfg.save_minutes or 0))
        return due or self.last(step)

    def saved(self) -> None:
        self.saved_at = time.monotonic()

    def out_of_patience(self, state: LoopState) -> bool:
        return bool(self.cfg.patience) and state.bad_evals >= self.cfg.patience


class Window:
    """The steps since the last metrics record: their loss, tokens and time."""

    def __init__(self, device, state: LoopState, is_main: bool):
        # this rank's summed token loss; a resumed run's partial window (every rank's, summed)
        # goes to rank 0, whose sum the record then all-reduces as usual
        self.loss = torch.tensor(state.window_loss if is_main else 0.0, device=device)
        self.targets, self.tokens = state.window_targets, state.window_tokens
        self.t0 = time.perf_counter() - state.window_seconds
        self.mean_loss: float | None = None  # of the last record, unrounded
        # The task's statistics (a preference pair's rewards), summed like the loss
        self.stats = {name: torch.tensor(value if is_main else 0.0, device=device)
                      for name, value in state.window_stats.items()}

    def save_into(self, state: LoopState, world) -> None:
        """The partial window into the state a checkpoint saves (a collective)."""
        state.window_loss = world.sum(self.loss.clone()).item()
        state.window_stats = self._summed(world)
        state.window_targets, state.window_tokens = self.targets, self.tokens
        state.window_seconds = time.perf_counter() - self.t0

    def add(self, result: StepResult) -> None:
        self.loss += result.loss
        self.targets += result.n_targets
        self.tokens += result.n_tokens
        for name, value in result.stats.items():
            self.stats[name] = self.stats[name] + value if name in self.stats else value.clone()

    def _summed(self, world) -> dict:
        """The statistics summed over every rank, in one collective (and one host sync)."""
        if not self.stats:
            return {}
        sums = world.sum(torch.stack(list(self.stats.values())).double()).tolist()
        return dict(zip(self.stats, sums))

    def record(self, setup: Setup, state: LoopState, lr: float, grad_norm: float,
               flops_tok: float, peak: float | None) -> dict:
        elapsed = time.perf_counter() - self.t0
        # host sync (and an all-reduce under several processes): log steps only
        loss = self.mean_loss = setup.world.sum(self.loss).item() / self.targets
        record = {"step": state.step, "epoch": round(state.step / setup.plan.steps_per_epoch, 4),
                  "loss": round(loss, 6), "lr": lr, "tokens": state.tokens,
                  "tokens_per_s": round(self.tokens / max(elapsed, 1e-9), 1),
                  "grad_norm": round(float(grad_norm), 4)}
        if peak:
            record["mfu"] = round(record["tokens_per_s"] * flops_tok
                                  / (peak * setup.world.size), 4)
        record.update({name: round(value / self.targets, 4)
                       for name, value in self._summed(setup.world).items()})
        if state.skipped_steps:  # updates skipped for a non-finite gradient so far
            record["skipped_steps"] = state.skipped_steps
        self.loss.zero_()
        self.stats = {}
        self.targets = self.tokens = 0
        self.t0 = time.perf_counter()
        return record


def step_batches(setup: Setup, start_step: int):
    """The micro-batches of every step from `start_step` on, epoch after epoch; the order
    depends only on (seed, epoch), so a resumed run skips batches without building them."""
    plan, accum = setup.plan, setup.cfg.grad_accum
    train_share = setup.world.shard(setup.data.train_set)
    step = start_step
    while True:
        epoch, in_epoch = divmod(step, plan.steps_per_epoch)
        batches = train_share.batches(epoch, plan.batch_size, start=in_epoch * accum)
        for _ in range(in_epoch, plan.steps_per_epoch):
            yield list(islice(batches, accum))
            step += 1


class _Logs:
    """metrics.jsonl and samples.jsonl (rank 0 writes them), and the events of both."""

    def __init__(self, run: RunFolder, is_main: bool, emit):
        writer = JsonlWriter if is_main else NoWriter
        self.metrics, self.samples = writer(run.metrics_file), writer(run.samples_file)
        self.emit = emit

    def metric(self, event: str, record: dict) -> None:
        self.metrics.write(record)
        self.emit(event, record)


def fit(setup: Setup, state: LoopState, run: RunFolder, emit, stop, fast) -> TrainResult:
    cfg, plan, world = setup.cfg, setup.plan, setup.world
    logs = _Logs(run, world.is_main, emit)
    info = {**setup.run_info(), **setup.task.info()}
    intervals = Intervals(cfg, plan.total_steps)
    n_trainable, n_params = parameter_counts(setup)
    if setup.task.name == "classify":  # no LM head: the embedding is a lookup, not a matmul
        n_params -= setup.unwrapped.get_input_embeddings().weight.numel()
    flops_tok = flops_per_token(n_params, n_trainable)
    peak = peak_flops(setup.accelerator.device.type, setup.precision)
    copies = LazyIndex(getattr(setup.data.train_set, "docs", None), setup.tokenizer)
    if setup.start is not None:  # after model set-up, which draws LoRA init from the RNG
        world.restore_rng(checkpoint.read_rng(setup.start))
    setup.model.train()
    window = Window(setup.accelerator.device, state, world.is_main)
    last_eval, stopped, bad_in_row = None, "completed", 0
    # This process's first record: what it ran on (a resumed run may run elsewhere).
    logs.metrics.write({"step": state.step, "device": setup.device,
                        "precision": setup.precision, "threads": setup.threads.threads,
                        "threads_why": setup.threads.why})
    watch = CoreWatch(setup.threads.threads) if (setup.threads.adapts and
                                                  setup.device == "cpu") else None
    emit("progress", {"step": state.step, "total": plan.total_steps})
    batches = step_batches(setup, state.step)
    while state.step < plan.total_steps:
        with stop.deferred():  # a signal here waits for the step's end
            result = step_module.train_step(setup, next(batches), state.step)
            bad_in_row = _count_skipped(result, state, bad_in_row, emit)
            step_lr = setup.scheduler.get_last_lr()[0]  # the rate this step used
            setup.scheduler.step()
            state.step += 1
            state.tokens += result.n_tokens
            window.add(result)
            if intervals.log(state.step):
                logs.metric("log", window.record(setup, state, step_lr, result.grad_norm,
                                                 flops_tok, peak))
            emit("progress", {"step": state.step, "total": plan.total_steps})
            if world.active:  # every rank stops after the same step
                stop.signum = world.agree_on_signal(stop.signum)
            _follow_load(watch, state.step, logs)
        side_t0 = time.perf_counter()  # evaluation, samples and saves are not training speed
        if not stop.signum:  # cut short by a signal, which then saves below
            with stop.interruptible():
                if intervals.evaluate(state.step):
                    last_eval = _evaluate(setup, state, logs) or last_eval
                if intervals.sample(state.step):
                    _sample(setup, state.step, logs, copies)
        with stop.deferred():
            if stop.signum or intervals.save(state.step) or intervals.out_of_patience(state):
                window.save_into(state, world)
                _save(setup, state, run, info, emit)
                intervals.saved()
        window.t0 += time.perf_counter() - side_t0
        if stop.signum:
            raise Interrupted(f"stopped by {signal.Signals(stop.signum).name} at step "
                              f"{state.step}; checkpoint saved in "
                              f"{run.checkpoints / checkpoint.step_name(state.step)}",
                              hint=f"resume with: {resume_command(run.path)}")
        if intervals.out_of_patience(state):
            stopped = "patience"
            emit("message", {"text": f"stopping early: no better {setup.task.best_metric} "
                                     f"in {cfg.patience} evaluations"})
            break
    try:  # a signal may cut it short: new_folder removes the part written
        _finish_model(setup, run, info, emit, fast, state.step)
    except Stopped as e:
        raise Interrupted(f"stopped by {e} while writing final/; every step is saved in "
                          f"{checkpoint.latest(run.checkpoints)}",
                          hint=f"write final/ and the report with: "
                               f"{resume_command(run.path)}") from None
    _report(setup, run, emit)
    return _result(setup, state, run, window.mean_loss, last_eval, stopped)


def _follow_load(watch: CoreWatch | None, step: int, logs: _Logs) -> None:
    """Fewer threads while other processes use the cores, the budget again when they stop
    (cpu.CoreWatch); each change is a metrics record like the first one."""
    threads = watch.threads_now() if watch is not None else None
    if threads is not None:
        torch.set_num_threads(threads)
        logs.metrics.write({"step": step, "threads": threads, "threads_why": watch.why()})


def _count_skipped(result: StepResult, state: LoopState, bad_in_row: int, emit) -> int:
    """Skipped updates in a row, after this step; too many is an error."""
    if not result.skipped:
        return 0
    state.skipped_steps += 1
    bad_in_row += 1
    if bad_in_row >= MAX_BAD_STEPS:
        raise UserError(f"the loss was not finite for {bad_in_row} steps in a row (step "
                        f"{state.step + 1})", hint="lower --lr, or use --precision fp32 or bf16 "
                                                   "instead of fp16")
    emit("message", {"text": f"step {state.step + 1}: non-finite gradient, update skipped"})
    return bad_in_row


def _evaluate(setup: Setup, state: LoopState, logs: _Logs) -> dict | None:
    """The task's metrics record (val_loss, and accuracy, macro_f1 ... for classify), and
    the best checkpoint and patience kept up to date."""
    if setup.data.val_set is None:
        return None
    val_share = setup.world.shard(setup.data.val_set)
    record = {"step": state.step, **setup.task.evaluate(
        setup.model, val_share, setup.plan.batch_size, setup.accelerator.device,
        setup.accelerator.autocast)}
    logs.metric("eval", record)
    rank = setup.task.rank(record)
    if state.best_rank is None or rank < state.best_rank:  # lists: compared item by item
        state.best_rank, state.best_step = rank, state.step
        state.best_score = record[setup.task.best_metric]
        state.bad_evals = 0
    else:
        state.bad_evals += 1
    return record


def _sample(setup: Setup, step: int, logs: _Logs, copies: LazyIndex) -> None:
    """Samples on the run's prompts, each checked against the training data for copying."""
    world, cfg = setup.world, setup.cfg
    # Under FSDP every rank takes part in each forward (the weights are sharded).
    if not (world.is_main or world.fsdp):
        return
    chat = getattr(setup.task, "chat", False)  # conversations: samples answer questions
    # the run's prompts, else the task's own (the first questions of chat data, the prompts
    # of held-out preference pairs), else unconditional samples
    prompts = cfg.sample_prompts or getattr(setup.task, "sample_prompts", None)
    with setup.accelerator.autocast():
        got = generate(setup.unwrapped, setup.tokenizer, prompts or None, n=1,
                       max_new_tokens=cfg.sample_max_new_tokens, seed=cfg.seed + step,
                       synced=world.fsdp, chat=chat)
    if not world.is_main:
        return
    checks = [copies.check(s.prompt, s.text) for s in got]
    for s, check in zip(got, checks):
        record = {"step": step, "prompt": s.prompt, "text": s.text, **check.to_dict()}
        logs.samples.write(record)
        logs.emit("sample", record)
    logs.metrics.write(copy_summary(step, checks))


def _save(setup: Setup, state: LoopState, run: RunFolder, info: dict, emit) -> None:
    # Skipped updates keep NaN out of the weights; this catches what still got in (an
    # overflow inside the optimizer), so no checkpoint ever holds a non-finite weight.
    if not checkpoint.all_finite(setup.params):
        raise UserError(f"the weights became non-finite at step {state.step}; no checkpoint "
                        f"was written for it", hint="lower --lr, or use --precision fp32 or "
                                                    "bf16 instead of fp16; resume from the "
                                                    "last checkpoint with --resume")
    world = setup.world
    gathered = world.full_state(setup.model, setup.optimizer)  # every rank's part, on rank 0
    if world.is_main:
        path = checkpoint.save(
            run.checkpoints, state.step, optimizer=setup.optimizer, keep=setup.cfg.keep,
            best_step=state.best_step, state=state.to_dict(),
            save_model=lambda folder: save_artifact(folder, setup.unwrapped, setup.tokenizer,
                                                    info, state_dict=gathered.weights),
            optimizer_state=gathered.optimizer, rng=gathered.rng)
        emit("checkpoint", {"step": state.step, "path": str(path)})
    world.barrier()  # no rank runs ahead (or exits on a stop) while rank 0 still writes


def _finish_model(setup: Setup, run: RunFolder, info: dict, emit, fast, step: int) -> None:
    """final/. The optimizer's state (two fp32 copies of every trainable weight) and the
    step's buffers go first, so they do not add to the run's peak memory."""
    world = setup.world
    setup.optimizer.state.clear()
    fast.release_buffers()
    weights = world.full_weights(setup.model)  # FSDP: gathered on rank 0
    if world.is_main:
        save_artifact(run.final, setup.unwrapped, setup.tokenizer, info, state_dict=weights)
    emit("end", {"final": str(run.final), "step": step})


def _report(setup: Setup, run: RunFolder, emit) -> None:
    world = setup.world
    if setup.cfg.report and world.is_main:  # loss.png, report.html, before/after samples
        # Under FSDP the tuned model is in shards; the report loads it from final/.
        report_at_end(run.path, None if world.fsdp else setup.unwrapped, setup.tokenizer,
                      setup.accelerator.device, setup.accelerator.autocast, emit)
    world.barrier()  # when train() returns, final/ is complete for every rank


def _result(setup: Setup, state: LoopState, run: RunFolder, last_loss, last_eval,
            stopped: str) -> TrainResult:
    task = setup.task
    is_loss = task.best_metric == "val_loss"
    return TrainResult(out=run.path, final=run.final, steps=state.step, train_loss=last_loss,
                       val_loss=last_eval["val_loss"] if last_eval else None,
                       best_val_loss=state.best_score if is_loss else None,
                       best_step=state.best_step, stopped=stopped, task=task.name,
                       best_metric=task.best_metric, best_score=state.best_score,
                       metrics=last_eval)
