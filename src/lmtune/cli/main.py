"""The command line: parse, call one function, print, map errors to exit codes.

Flags are generated from the typed configs (parser.py), so defaults and help text live in one
place. Errors go to stderr as one line plus a `hint:` line; data goes to stdout.
"""

from __future__ import annotations

import atexit
import importlib
import os
import sys

from lmtune import config as config_mod
from lmtune.config import TrainConfig
from lmtune.cli.parser import build_parser
from lmtune.cli.progress import StageBars
from lmtune.errors import Stopped, UserError, stop_on_signals
from lmtune.progress import listening, stage


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


def _start_libraries(threads: int | None) -> None:
    """torch and transformers, imported before the command's own work, as a stage: they take
    seconds (3-8 s on a 2-core CPU), and a command must not sit silent meanwhile."""
    with stage("starting (loading torch and transformers)"):
        from lmtune.device import set_threads
        if threads is not None:
            set_threads(threads)
        import transformers  # noqa: F401


def run() -> None:
    """The `lmtune` program: main(), the atexit handlers, then an exit that skips tearing the
    interpreter down (freeing torch's and transformers' modules and objects took 1.8 s after
    a training run on a 2-core AVX2 EPYC). Every file lmtune writes is closed by then."""
    code = [1]  # an unexpected exception prints its traceback and exits 1

    def leave() -> None:  # registered first, so it runs after every other atexit handler
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code[0])
    atexit.register(leave)
    try:
        code[0] = main()
    except SystemExit as e:  # argparse's usage errors, --help
        code[0] = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        raise
    sys.exit(code[0])


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extras = parser.parse_known_args(argv)
    if not args.command:
        if extras:
            parser.refuse_unknown(extras)
        parser.print_help(sys.stderr)
        return 2
    if extras:  # the command's own usage line, and the flag it probably meant
        args._parser.refuse_unknown(extras)
    stop_on_signals()
    values = {k: v for k, v in vars(args).items() if not k.startswith("_")
              and k not in ("command", "subcommand", "config")}
    module, func = args._handler.split(":")
    bars = StageBars()
    try:
        _quiet_libraries()
        if args._cls is TrainConfig:  # --resume reads the run's own config first
            from lmtune.run.folder import train_config
            cfg = train_config(values, args.config)
        else:
            cfg = config_mod.build(args._cls, values, args.config)
        with listening(bars):  # every stage of the library drawn on stderr
            if hasattr(cfg, "threads"):  # a command that runs a model
                _start_libraries(cfg.threads)
            return getattr(importlib.import_module(module), func)(cfg) or 0
    except UserError as e:
        _print_error(e)
        return e.exit_code
    except KeyboardInterrupt:  # a second Ctrl-C in training, or the first elsewhere
        print("error: interrupted; no checkpoint was written for the current step"
              if args._cls is TrainConfig else "error: interrupted", file=sys.stderr)
        return 130
    except Stopped as e:
        print(f"error: stopped by {e}; what was being written was removed, what was "
              f"complete is kept", file=sys.stderr)
        return e.exit_code
    finally:
        bars.close()


def _print_error(e: UserError) -> None:
    rank = os.environ.get("RANK", "0")  # set by torchrun; rank 0 speaks plainly
    where = "" if rank == "0" else f"[rank {rank}] "
    print(f"error: {where}{e.message}", file=sys.stderr)
    if e.hint:
        print(f"hint: {e.hint}", file=sys.stderr)
