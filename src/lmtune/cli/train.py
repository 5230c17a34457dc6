"""`lmtune train` and `lmtune demo`: the training console, then what the run produced."""

from __future__ import annotations

import json
import os

from lmtune.cli.output import duration as _duration
from lmtune.config import DemoConfig, TrainConfig


def cmd_train(cfg: TrainConfig) -> int:
    from lmtune import distributed
    from lmtune.cli.console import TrainConsole
    from lmtune.training.launch import hand_back
    from lmtune.training.train import train

    with TrainConsole() as console:
        try:
            result = train(cfg, on_event=console)
        finally:
            distributed.close()
    if os.environ.get("RANK", "0") != "0":  # under a launcher, rank 0 speaks for the run
        return 0
    if os.environ.get(distributed.RESULT_ENV):  # a --devices worker: the launcher prints
        hand_back(result)
        return 0
    if cfg.dry_run and cfg.json:
        print(json.dumps(result.to_dict(), ensure_ascii=False))
        return 0
    if cfg.dry_run:
        return print_dry_run(result)
    print(f"final model: {result.final}")
    if (result.out / "report.html").is_file():
        print(f"report: {result.out / 'report.html'}")
    if result.task == "classify":
        from lmtune.cli.classify import print_train_end
        return print_train_end(result)
    if result.task == "preference" and result.metrics is not None:
        from lmtune.cli.console import reward_line
        print(f"validation at step {result.metrics['step']}: {reward_line(result.metrics)}")
    if result.best_val_loss is not None:
        print(f"best validation loss {result.best_val_loss:.4f} at step {result.best_step}")
    print(f"try it: lmtune generate {result.out} --prompt '...'")
    return 0


def cmd_demo(args: DemoConfig) -> int:
    from lmtune.cli.console import TrainConsole
    from lmtune.demo import PROMPT, run_demo

    epochs = 1.0 if args.quick else args.epochs
    print(demo_plan(args, epochs, PROMPT), flush=True)
    with TrainConsole() as console:
        result = run_demo(out=args.out, epochs=epochs, model=args.model, on_event=console,
                          trust_remote_code=args.trust_remote_code,
                          allow_pickle=args.allow_pickle)
    for title, samples in (("BEFORE fine-tuning", result.before),
                           ("AFTER fine-tuning", result.after)):
        stopped = sum(s.finish_reason == "stop" for s in samples)
        print(f"\n=== {title} ({stopped} of {len(samples)} samples stopped on their own) ===")
        for s in samples:
            print(f"- {(s.prompt + s.text).strip()}")
    print(f"\nrun folder: {result.train.out}  (data: {result.data})")
    print(f"more: lmtune generate {result.train.out} --prompt {PROMPT!r} -n 8")
    return 0


def demo_plan(args: DemoConfig, epochs: float, prompt: str) -> str:
    """What the demo will do and how long it takes, before it starts."""
    from lmtune.config.defaults import DEMO_EPOCHS, DEMO_MINUTES

    usual = args.model is None and epochs in (1.0, DEMO_EPOCHS)
    took = DEMO_MINUTES["quick" if epochs == 1.0 else "full"]
    when = (f"{took} minutes on a quiet 2-core CPU" if usual else "a while")
    faster = " (lmtune demo --quick: one pass)" if usual and epochs != 1.0 else ""
    return (f"Fine-tuning {args.model or 'the default model (SmolLM2-135M-Instruct)'} on the "
            f"jokes that pyjokes ships; prompt: {prompt!r}\n"
            f"plan: 4 samples before, {epochs:g} pass{'es' if epochs != 1 else ''} of training "
            f"with samples along the way, 4 samples after; {when}{faster}. The training bar "
            f"shows the time left on this machine.")


def print_dry_run(result) -> int:
    if result.data is not None:
        from lmtune.cli.data import print_data_report
        print_data_report(result.data)
        print()
    from lmtune.cli.console import ROWS

    p = result.plan
    rows = ROWS.get(p.get("task"))
    if rows:  # texts or pairs, each cut at the block size, not packed blocks
        print(f"plan: {p['batch_size']} {rows} per batch (cut at {p['block_size']} tokens) x "
              f"accumulation {p['grad_accum']}, {p['steps_per_epoch']} steps per epoch, "
              f"{p['total_steps']} steps in all")
    else:
        print(f"plan: {p['tokens_per_step']} tokens per step (batch {p['batch_size']} x block "
              f"{p['block_size']} x accumulation {p['grad_accum']}), {p['steps_per_epoch']} "
              f"steps per epoch, {p['total_steps']} steps in all")
    low, high = result.seconds_per_step_range
    print(f"measured on {result.device} in {result.precision}: {result.seconds_per_step:.2f}s "
          f"per step (median of {result.measured_steps} steps; fastest {low:.2f}s, slowest "
          f"{high:.2f}s)")
    steps = result.plan["total_steps"]
    spread = (f" (between {_duration(low * steps)} and {_duration(high * steps)} at the "
              f"fastest and slowest step's pace)" if high > 1.15 * low else "")
    print(f"estimate: {_duration(result.seconds_per_epoch)} per epoch, "
          f"{_duration(result.seconds_training)} for the whole run{spread}"
          + (f", plus about {_duration(result.seconds_evaluating)} of validation"
             if result.seconds_evaluating else "")
          + " (samples and checkpoints not counted)")
    print("dry run: nothing was trained or written")
    return 0
