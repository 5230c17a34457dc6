"""Turns training events into what a person sees: a progress bar, messages and samples.

Everything goes to stderr, so stdout stays clean for results a script may read."""

from __future__ import annotations

import sys

from tqdm.auto import tqdm

from lmtune.cli.output import short_count
from lmtune.cli.progress import StageBars

# What a batch row is, for the tasks whose rows are not packed blocks
ROWS = {"classify": "texts", "preference": "pairs"}


def reward_line(m: dict) -> str:
    """A preference record's rewards: how often the chosen answer wins, and by how much."""
    return (f"reward accuracy {m['reward_accuracy']:.3f}, margin {m['reward_margin']:.3f} "
            f"(chosen {m['rewards_chosen']:+.3f}, rejected {m['rewards_rejected']:+.3f})")


def collapse_note(m: dict) -> str:
    """A classifier that answers one label for every text has learned only the label counts."""
    return (f"note: the model predicts '{m['only_label']}' for every validation text (accuracy "
            f"{m['accuracy']:.3f}; always answering the most common label scores "
            f"{m['baseline_accuracy']:.3f}); train longer (--epochs), balance the classes "
            f"(--class-weights auto) or raise --lr")


class TrainConsole:
    def __init__(self, stream=None):
        self.stream = stream or sys.stderr
        self.bar: tqdm | None = None
        self.postfix: dict = {}
        self.stages = StageBars(self.stream)  # loading, evaluating, sampling, the report

    def on_stage(self, d: dict) -> None:
        self.stages("stage", d)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stages.close()
        if self.bar is not None:
            self.bar.close()

    def say(self, text: str) -> None:
        if self.bar is not None:
            self.bar.write(text, file=self.stream)
        else:
            print(text, file=self.stream, flush=True)

    def __call__(self, event: str, data: dict) -> None:
        getattr(self, "on_" + event, lambda d: None)(data)

    def on_start(self, d: dict) -> None:
        s = d["stats"]
        for note in s.get("notes", []):
            self.say(f"note: {note}")
        dropped = s.get("dropped_empty", 0) + s.get("dropped_missing", 0)
        self.say(f"data: {d['train_examples']} training and {d['val_examples']} validation "
                 f"examples, {short_count(d['train_tokens'])} training tokens"
                 + (f" ({dropped} empty or incomplete records skipped)" if dropped else ""))
        adapter = " (a LoRA adapter)" if d["method"] == "lora" else ""
        self.say(f"model: {d['model']} on {d['device']} in {d['precision']}, "
                 f"{short_count(d['total'])} parameters; method {d['method']}: "
                 f"{short_count(d['trainable'])} parameters train{adapter}, "
                 f"{100 * d['trainable'] / max(1, d['total']):.2f}% of the model's")
        if d["device"] == "cpu":
            self.say(d["threads_line"])
        per_step = d["tokens_per_step"]
        world = d.get("world_size", 1)
        procs = f" x {world} processes" if world > 1 else ""
        if d.get("task") in ("classify", "preference"):
            what = "texts" if d["task"] == "classify" else "pairs"
            self.say(f"plan: {d['batch_size']} {what} per batch (cut at {d['block_size']} "
                     f"tokens) x accumulation {d['grad_accum']}{procs}, {d['steps_per_epoch']} "
                     f"steps per epoch, {d['total_steps']} steps, lr {d['lr']}")
        else:
            self.say(f"plan: {per_step} tokens per step (batch {d['batch_size']} x block "
                     f"{d['block_size']} x accumulation {d['grad_accum']}{procs}), "
                     f"{d['steps_per_epoch']} steps per epoch, {d['total_steps']} steps, "
                     f"lr {d['lr']}")
        if world > 1:
            self.say(f"distributed: {world} processes, global batch {d['global_batch']} "
                     f"{ROWS.get(d.get('task'), 'blocks')} per step "
                     f"({d['batch_size']} per device x accumulation {d['grad_accum']} x "
                     f"{world})")
        if d["train_tokens"] < per_step and d.get("task") not in ROWS:
            self.say(f"note: the training data ({d['train_tokens']} tokens) is smaller than one "
                     f"step; every step sees all of it")
        if d["start_step"]:
            self.say(f"resuming at step {d['start_step']}")
        self.say(f"run folder: {d['out']}")

    def on_progress(self, d: dict) -> None:
        if self.bar is None:
            self.bar = tqdm(total=d["total"], initial=d["step"], file=self.stream,
                            desc="training", unit="step", dynamic_ncols=True)
        else:
            self.bar.update(d["step"] - self.bar.n)

    def on_log(self, d: dict) -> None:
        self.postfix.update(loss=f"{d['loss']:.4f}", lr=f"{d['lr']:.2e}",
                            tok_s=f"{d['tokens_per_s']:.0f}")
        if "reward_accuracy" in d:  # --task preference
            self.postfix["acc"] = f"{d['reward_accuracy']:.2f}"
        if self.bar is not None:
            self.bar.set_postfix(self.postfix, refresh=False)

    def on_eval(self, d: dict) -> None:
        self.postfix["val_loss"] = f"{d['val_loss']:.4f}"
        if self.bar is not None:  # shown now, not one log (or one evaluation) later
            self.bar.set_postfix(self.postfix, refresh=True)
        if "macro_f1" in d:  # --task classify
            self.say(f"step {d['step']}: validation loss {d['val_loss']:.4f}, accuracy "
                     f"{d['accuracy']:.3f}, macro F1 {d['macro_f1']:.3f} (precision "
                     f"{d['macro_precision']:.3f}, recall {d['macro_recall']:.3f})")
            if "only_label" in d:
                self.say(collapse_note(d))
            return
        if "reward_accuracy" in d:  # --task preference
            self.say(f"step {d['step']}: validation loss {d['val_loss']:.4f}, "
                     f"{reward_line(d)}")
            return
        # bits per character: the one figure that compares runs on different tokenizers
        bpc = f", {d['val_bits_per_char']:.3f} bits per character" \
            if "val_bits_per_char" in d else ""
        self.say(f"step {d['step']}: validation loss {d['val_loss']:.4f} "
                 f"(perplexity {d['val_ppl']:.2f}{bpc})")

    def on_sample(self, d: dict) -> None:
        text = (d["prompt"] + d["text"]).strip().replace("\n", "\n    ")
        self.say(f"sample at step {d['step']}: {text}")

    def on_message(self, d: dict) -> None:
        self.say(d["text"])

    def on_checkpoint(self, d: dict) -> None:
        pass

    def on_end(self, d: dict) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
