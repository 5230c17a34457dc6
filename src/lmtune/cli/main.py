"""The command line: parse, call one function, print, map errors to exit codes.

Flags are generated from the typed configs (parser.py), so defaults and help text live in one
place. Errors go to stderr as one line plus a `hint:` line; data goes to stdout.
"""

from __future__ import annotations

import importlib
import os
import sys

from lmtune import config as config_mod
from lmtune.config import TrainConfig
from lmtune.cli.parser import build_parser
from lmtune.errors import UserError


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
        if args._cls is TrainConfig:  # --resume reads the run's own config first
            from lmtune.run.folder import train_config
            cfg = train_config(values, args.config)
        else:
            cfg = config_mod.build(args._cls, values, args.config)
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
