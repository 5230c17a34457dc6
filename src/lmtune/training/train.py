"""`train()`: what both `lmtune train` and `lmtune.train(...)` call. Read it top to bottom:

  check the flags -> join the process group -> check --out -> set up (setup.py: data, model,
  method, optimizer) -> [dry run: time a few steps and return] -> take the run folder's lock,
  write config.yaml -> fit (loop.py) -> the final model and the report

It reports progress through `on_event(name, data)` (the CLI turns events into a progress bar
and messages) and returns a `TrainResult`; it prints nothing itself.
"""

from __future__ import annotations

import dataclasses
import signal
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

from lmtune import distributed
from lmtune.atomic import is_disk_full
from lmtune.config import TrainConfig, check_train, refuse
from lmtune.errors import Stopped, UserError
from lmtune.progress import check_callback, listening
from lmtune.run.folder import RunFolder, default_out, train_config
from lmtune.run.resume import final_is_current
from lmtune.tasks import task_for
from lmtune.training.dryrun import DryRunResult, dry_run
from lmtune.training.loop import LoopState, fit, initial_state
from lmtune.training.optim import schedule_change
from lmtune.training.result import TrainResult
from lmtune.training.setup import Setup, build, parameter_counts


def _emit_nothing(event: str, data: dict) -> None:
    pass


def train(config: TrainConfig | None = None, *, config_file: str | None = None,
          on_event: Callable[[str, dict], None] | None = None,
          **overrides) -> TrainResult | DryRunResult:
    """Fine-tune a model. Pass a `TrainConfig`, or option names as keyword arguments
    (`train("jokes.txt", method="lora", epochs=2)`), optionally over a YAML `config_file`.
    With `dry_run=True` it returns a DryRunResult and writes nothing."""
    check_callback(on_event)
    emit = on_event or _emit_nothing
    cfg = config if config is not None else train_config(overrides, config_file)
    task = task_for(cfg)
    refuse(check_train(cfg) + task.check(cfg))
    world = distributed.start(cfg)
    # Every rank writes (through rank 0) to rank 0's folder: a default name holds the time.
    run = RunFolder(world.same_path(Path(cfg.out) if cfg.out else default_out(cfg.data)))
    # The folder checks run before the model is resolved: resolving the default model may
    # convert it first (about 20 s), and a wrong --out should not wait for that.
    run.check_out(resume=cfg.resume, overwrite=cfg.overwrite, model_path=cfg.model,
                  data_path=cfg.data)
    if cfg.devices > 1 and not world.active:
        from lmtune.training.launch import relaunch
        # this same train() on cfg.devices processes, under torchrun
        return relaunch(dataclasses.replace(cfg, out=str(run.path)))
    if not world.is_main:
        emit = _emit_nothing  # one progress bar and one set of messages: rank 0's
    with listening(emit):  # the stages inside (loading, evaluating, sampling) go to on_event
        return _train(cfg, task, world, run, emit)


def _train(cfg: TrainConfig, task, world, run: RunFolder, emit) -> TrainResult | DryRunResult:
    # Rank 0 holds an existing folder from before its checkpoints are read: a second trainer
    # is told so, rather than finding a checkpoint half pruned by the first.
    with run.lock(now=world.is_main and not cfg.dry_run) as lock:
        setup = build(cfg, task, world, run)
        state = initial_state(setup)
        # A run whose steps are done but whose final/ save failed (a full disk, a kill)
        # resumes into no steps: final/ and the report are written from the last checkpoint.
        if state.step >= setup.plan.total_steps and final_is_current(run.path, setup.start):
            raise UserError(f"{run.path} already trained {state.step} steps",
                            hint="raise --max-steps or --epochs to train further")
        _announce(setup, state, emit)
        state.total_steps = setup.plan.total_steps
        with setup.fast as fast:
            if setup.cfg.dry_run:  # the plan above, a data report and a few timed steps
                return dry_run(setup)
            return _run(setup, state, run, emit, fast, lock)


def _run(setup: Setup, state: LoopState, run: RunFolder, emit, fast, lock) -> TrainResult:
    """The run folder, created only now that every input has been checked; rank 0 alone
    writes it, under its lock."""
    world, cfg = setup.world, setup.cfg
    stop = StopFlag(always_defer=world.active)
    try:
        if world.is_main:
            run.path.mkdir(parents=True, exist_ok=True)
            lock.acquire()  # a new folder: locked as soon as it exists
            if cfg.overwrite and not cfg.resume:
                run.clear()
            run.clean_partial()
            run.mark()
            if setup.start is not None:
                # After a crash the logs run past the checkpoint; those steps run again.
                run.drop_records_after(state.step)
            run.write_config(cfg)
        stop.install()
        return fit(setup, state, run, emit, stop, fast)
    except OSError as e:
        if not is_disk_full(e):
            raise
        raise UserError(f"disk full while writing {e.filename or run.path}: {e.strerror}",
                        hint=run.disk_full_hint(distributed.resume_command(run.path))) from None
    finally:
        stop.restore()


def _announce(setup: Setup, state: LoopState, emit) -> None:
    """The start event: what trains, on what, with which plan; then the task's messages."""
    cfg, plan, data = setup.cfg, setup.plan, setup.data
    trainable, total = parameter_counts(setup)
    emit("start", {"out": cfg.out, "model": cfg.model, "method": cfg.method,
                   "trainable": trainable, "total": total, "device": setup.device,
                   "precision": setup.precision, **data.summary, "task": setup.task.name,
                   "block_size": plan.block_size, "batch_size": plan.batch_size,
                   "grad_accum": cfg.grad_accum, "tokens_per_step": plan.tokens_per_step,
                   "world_size": setup.world.size,
                   "global_batch": plan.batch_size * cfg.grad_accum * setup.world.size,
                   "steps_per_epoch": plan.steps_per_epoch, "total_steps": plan.total_steps,
                   "start_step": state.step, "lr": cfg.lr, "threads": setup.threads.threads,
                   "threads_line": setup.threads.line()})
    for text in [*setup.warnings, *data.messages]:
        emit("message", {"text": text})
    for change in setup.changes:
        emit("message", {"text": f"--force-resume: {change}"})
    if setup.start is not None and state.total_steps is not None:
        change = schedule_change(cfg, state.step, state.total_steps, plan.total_steps)
        if change:
            emit("message", {"text": f"note: {change}"})


class StopFlag:
    """SIGTERM or a first Ctrl-C during a step or a save: finish it, save, exit. Anywhere else
    (evaluation, samples, the report): raise Stopped at once; the loop then saves the last
    finished step. A second Ctrl-C: stop now. Under several processes every signal waits
    for the end of the step, where the ranks agree on it (a rank that left a collective
    early would hang the others)."""

    def __init__(self, always_defer: bool = False):
        self.signum: int | None = None
        self.old: dict = {}
        self.deferring = always_defer
        self.always_defer = always_defer

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for s in (signal.SIGINT, signal.SIGTERM):
            self.old[s] = signal.signal(s, self._handle)

    def _handle(self, signum, frame) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum
        if not self.deferring:
            raise Stopped(signum)

    @contextmanager
    def deferred(self):
        """Work that must finish once begun (a step, a save); a signal waits for its end."""
        before, self.deferring = self.deferring, True
        try:
            yield
        finally:
            self.deferring = before or self.always_defer

    @contextmanager
    def interruptible(self):
        """Work a signal may cut short (evaluation, samples): Stopped ends it here, and the
        caller, seeing `signum`, saves the last finished step."""
        before, self.deferring = self.deferring, self.always_defer
        try:
            yield
        except Stopped:
            pass
        finally:
            self.deferring = before

    def restore(self) -> None:
        for s, handler in self.old.items():
            signal.signal(s, handler)
        self.old = {}
