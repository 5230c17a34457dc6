"""The command line: parse, call one function, print, map errors to exit codes.

Flags are generated from the typed configs in config.py, so defaults and help text live in
one place. Errors go to stderr as one line plus a `hint:` line; data goes to stdout.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import os
import sys
from typing import Any

from lmtune import config as config_mod
from lmtune.config import (DemoConfig, GenerateConfig, MergeConfig, PredictConfig,
                           PrepareConfig, ServeConfig, TrainConfig)
from lmtune.errors import UserError


def _add_config_flags(parser: argparse.ArgumentParser, cls: type) -> None:
    types = config_mod.field_types(cls)
    groups: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        meta, tp = f.metadata, types[f.name]
        group_name = meta.get("group", "options")
        group = groups.setdefault(group_name, parser.add_argument_group(group_name))
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        help_text = meta["help"]
        if default not in (None, "", [], False) and tp is not bool:
            help_text += f" (default: {default})"
        # Every flag defaults to SUPPRESS so we can tell what the user typed from what the
        # config file or the dataclass should decide. argparse %-formats help ("5% of").
        kw: dict[str, Any] = {"default": argparse.SUPPRESS, "help": help_text.replace("%", "%%")}
        if meta.get("positional"):
            group.add_argument(f.name, nargs="*" if tp is list else "?",
                               metavar=f.name.upper(), **kw)
            continue
        names = ["--" + f.name.replace("_", "-")]
        if meta.get("alias"):
            names.insert(0, meta["alias"])
        if tp is bool:
            group.add_argument(*names, dest=f.name, action="store_true", **kw)
            if default is True:
                group.add_argument("--no-" + f.name.replace("_", "-"), dest=f.name,
                                   action="store_false", default=argparse.SUPPRESS,
                                   help=f"Turn off {names[-1]}.")
            continue
        if tp is list:
            once = meta.get("repeat")  # see config.opt
            kw.update(action="append" if once else "extend", nargs=None if once else "+")
            kw["metavar"] = meta.get("metavar") or ("TEXT" if once else "NAME")
        else:
            kw["type"] = tp
            if meta.get("choices"):
                kw["choices"] = meta["choices"]
        group.add_argument(*names, dest=f.name, **kw)


# Each command: (name, typed config, help, "module:function"). The function takes the parsed
# config and prints; the work itself is done by library functions that print nothing. A name
# with a space ("data prepare") becomes a nested command. Handlers import lazily so that
# `lmtune --help` does not load torch.
COMMANDS: list[tuple[str, type, str, str]] = [
    ("train", TrainConfig, "Fine-tune a model on a data file.", "lmtune.cli:run_train"),
    ("generate", GenerateConfig, "Generate text from a model or run folder.",
     "lmtune.cli:run_generate_cmd"),
    ("merge", MergeConfig, "Merge a LoRA run into its base as a standalone model.",
     "lmtune.cli:run_merge"),
    ("data prepare", PrepareConfig, "Tokenize a corpus once into the token cache that train "
                                    "reads (memory-mapped, keyed by content and tokenizer).",
     "lmtune.cli_prepare:run_prepare"),
    ("demo", DemoConfig, "Fine-tune the default model on the jokes that pyjokes ships and "
                         "show samples before and after.", "lmtune.cli:run_demo_cmd"),
    ("serve", ServeConfig, "Serve models and runs over an OpenAI-compatible HTTP API.",
     "lmtune.cli_serve:run_serve"),
    ("predict", PredictConfig, "Label texts with a classification run (lmtune train "
                               "--task classify).", "lmtune.cli_classify:run_predict"),
    ("eval", config_mod.EvalConfig, "Loss and perplexity of a model or run on a data file "
                                    "(accuracy and F1 for a classification run).",
     "lmtune.cli_analysis:run_eval"),
    ("compare", config_mod.CompareConfig, "A base and a fine-tuned model side by side: samples "
                                          "with the same seed, perplexity on --data and "
                                          "--reference.", "lmtune.cli_analysis:run_compare"),
    ("diff", config_mod.DiffConfig, "How much fine-tuning changed each weight tensor and block "
                                    "(LoRA included, without merging).",
     "lmtune.cli_analysis:run_diff"),
    ("report", config_mod.ReportConfig, "Write loss.png and a self-contained report.html for a "
                                        "run.", "lmtune.cli_analysis:run_report"),
    ("data inspect", config_mod.InspectConfig, "What a data file becomes for a model: counts, "
                                               "lengths, padding waste, duplicates, warnings.",
     "lmtune.cli_analysis:run_inspect"),
]


def build_parser() -> argparse.ArgumentParser:
    from lmtune import __version__

    parser = argparse.ArgumentParser(
        prog="lmtune", description="Fine-tune GPT-style language models on your own text.")
    parser.add_argument("--version", action="version", version=f"lmtune {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    groups: dict[str, Any] = {}
    for name, cls, help_text, handler in COMMANDS:
        parent = sub
        if " " in name:
            group, name = name.split(" ", 1)
            if group not in groups:
                g = sub.add_parser(group, help=f"{group} commands")
                groups[group] = g.add_subparsers(dest="subcommand", metavar="COMMAND",
                                                 required=True)
            parent = groups[group]
        p = parent.add_parser(name, help=help_text, description=help_text)
        p.add_argument("--config", metavar="YAML", default=None,
                       help="Read options from a YAML file; flags given here override it.")
        _add_config_flags(p, cls)
        p.set_defaults(_cls=cls, _handler=handler)
    return parser


def _quiet_libraries() -> None:
    # TOKENIZERS_PARALLELISM stays as it is: "false" would stop the Rust tokenizer from
    # spreading a batch over the cores, and lmtune does not fork after tokenizing.
    import warnings
    warnings.filterwarnings("ignore")
    try:
        from transformers.utils import logging as hf_logging
        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except ImportError:
        pass


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help(sys.stderr)
        return 2
    _quiet_libraries()
    values = {k: v for k, v in vars(args).items() if not k.startswith("_")
              and k not in ("command", "subcommand", "config")}
    module, func = args._handler.split(":")
    try:
        builder = config_mod.BUILDERS.get(args._cls)
        cfg = (builder(values, args.config) if builder
               else config_mod.build(args._cls, values, args.config))
        return getattr(importlib.import_module(module), func)(cfg) or 0
    except UserError as e:
        _print_error(e)
        return e.exit_code
    except KeyboardInterrupt:
        print("error: interrupted; no checkpoint was written for the current step",
              file=sys.stderr)
        return 130


def _print_error(e: UserError) -> None:
    rank = os.environ.get("RANK", "0")  # set by torchrun; rank 0 speaks plainly
    where = "" if rank == "0" else f"[rank {rank}] "
    print(f"error: {where}{e.message}", file=sys.stderr)
    if e.hint:
        print(f"hint: {e.hint}", file=sys.stderr)


def run_train(cfg: TrainConfig) -> int:
    from lmtune import distributed, launch
    from lmtune.console import TrainConsole
    from lmtune.train import train

    with TrainConsole() as console:
        try:
            result = train(cfg, on_event=console)
        finally:
            distributed.close()
    if os.environ.get("RANK", "0") != "0":  # under a launcher, rank 0 speaks for the run
        return 0
    if os.environ.get(launch.RESULT_ENV):  # a worker of --devices: the launching lmtune prints
        launch.hand_back(result)
        return 0
    if cfg.dry_run:
        from lmtune.cli_analysis import print_dry_run
        return print_dry_run(result)
    print(f"final model: {result.final}")
    if (result.out / "report.html").is_file():
        print(f"report: {result.out / 'report.html'}")
    if result.task == "classify":
        from lmtune.cli_classify import print_train_end
        return print_train_end(result)
    if result.best_val_loss is not None:
        print(f"best validation loss {result.best_val_loss:.4f} at step {result.best_step}")
    print(f"try it: lmtune generate {result.out} --prompt '...'")
    return 0


def run_demo_cmd(args: DemoConfig) -> int:
    from lmtune.console import TrainConsole
    from lmtune.demo import PROMPT, run_demo

    print(f"Fine-tuning {args.model or 'the default model (SmolLM2-135M-Instruct)'} on the "
          f"jokes that pyjokes ships; prompt: {PROMPT!r}", flush=True)
    with TrainConsole() as console:
        result = run_demo(out=args.out, epochs=args.epochs, model=args.model, on_event=console,
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


def run_generate_cmd(cfg: GenerateConfig) -> int:
    from lmtune.api import load, run_generate

    model, tokenizer = load(cfg.model, device=cfg.device, precision="fp32",
                            trust_remote_code=cfg.trust_remote_code,
                            allow_pickle=cfg.allow_pickle)
    from lmtune.cli_analysis import memorization_index, memorization_line
    copies = memorization_index(cfg, tokenizer)  # --check-memorization DATA, read up front
    samples = run_generate(cfg, model, tokenizer)
    for i, s in enumerate(samples):
        check = copies.check(s.prompt, s.text).to_dict() if copies else {}
        if cfg.json:
            print(json.dumps({**s.to_dict(), **check}, ensure_ascii=False))
        else:
            if i:
                print("-" * 40)
            print(s.prompt + s.text)
            if check:
                print(memorization_line(check))
    return 0


def run_merge(cfg: MergeConfig) -> int:
    from lmtune.merge import merge

    if not cfg.run or not cfg.out:
        raise UserError("merge needs a run folder and --out", hint="lmtune merge RUN --out DIR")
    result = merge(cfg.run, cfg.out, trust_remote_code=cfg.trust_remote_code,
                   allow_pickle=cfg.allow_pickle)
    print(f"merged model: {result.out}")
    print(f"largest logit difference between adapter and merged model: "
          f"{result.max_logit_diff:.2e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
