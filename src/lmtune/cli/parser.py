"""The argument parser, generated from the typed configs (config/): every field is a flag with
its help text and default, so they live in one place. Every flag defaults to "not given",
so a config file and the dataclass decide what the user did not type."""

from __future__ import annotations

import argparse
import dataclasses
import difflib
from typing import Any

from lmtune import config as config_mod
from lmtune.config import (CompareConfig, DemoConfig, DiffConfig, EvalConfig, ExportConfig,
                           GenerateConfig, InspectConfig, MergeConfig, PredictConfig, PrepareConfig,
                           ReportConfig, ServeConfig, TokenizerExtendConfig,
                           TokenizerStatsConfig, TrainConfig,
                           WorkerConfig, JobsOptions, JobsCreateConfig, JobConfig)


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


# Each command: (name, typed config, help, "module:function"). The function (a `cmd_*` handler
# in cli/) takes the parsed config and prints; the work itself is done by library functions
# that print nothing. A name
# with a space ("data prepare") becomes a nested command. Handlers import lazily so that
# `lmtune --help` does not load torch.
COMMANDS: list[tuple[str, type, str, str]] = [
    ("train", TrainConfig, "Fine-tune a model on a data file.", "lmtune.cli.train:cmd_train"),
    ("generate", GenerateConfig, "Generate text from a model or run folder.",
     "lmtune.cli.models:cmd_generate"),
    ("merge", MergeConfig, "Merge a LoRA run into its base as a standalone model.",
     "lmtune.cli.models:cmd_merge"),
    ("export", ExportConfig, "Write a run as a GGUF file for llama.cpp, Ollama and LM Studio.",
     "lmtune.cli.models:cmd_export"),
    ("data prepare", PrepareConfig, "Tokenize a corpus once into the token cache that train "
                                    "reads (memory-mapped, keyed by content and tokenizer).",
     "lmtune.cli.data:cmd_prepare"),
    ("demo", DemoConfig, "Fine-tune the default model on the jokes that pyjokes ships and "
                         "show samples before and after.", "lmtune.cli.train:cmd_demo"),
    ("serve", ServeConfig, "Serve models and runs over an OpenAI-compatible HTTP API, "
                           "with OpenAI's fine-tuning API (files and jobs) beside it.",
     "lmtune.cli.serve:cmd_serve"),
    ("worker", WorkerConfig, "Train queued fine-tuning jobs of the service (lmtune serve's "
                             "/v1/fine_tuning/jobs), one at a time.",
     "lmtune.cli.serve:cmd_worker"),
    ("jobs create", JobsCreateConfig, "Upload data and start a fine-tuning job on a server.",
     "lmtune.cli.jobs:cmd_create"),
    ("jobs list", JobsOptions, "The server's fine-tuning jobs, newest first.",
     "lmtune.cli.jobs:cmd_list"),
    ("jobs show", JobConfig, "One fine-tuning job.", "lmtune.cli.jobs:cmd_show"),
    ("jobs events", JobConfig, "A fine-tuning job's events (--follow: until it ends).",
     "lmtune.cli.jobs:cmd_events"),
    ("jobs cancel", JobConfig, "Cancel a fine-tuning job (its files are kept).",
     "lmtune.cli.jobs:cmd_cancel"),
    ("jobs pause", JobConfig, "Pause a fine-tuning job at a checkpoint.",
     "lmtune.cli.jobs:cmd_pause"),
    ("jobs resume", JobConfig, "Resume a paused fine-tuning job from its checkpoint.",
     "lmtune.cli.jobs:cmd_resume"),
    ("predict", PredictConfig, "Label texts with a classification run (lmtune train "
                               "--task classify).", "lmtune.cli.classify:cmd_predict"),
    ("eval", EvalConfig, "Loss and perplexity of a model or run on a data file "
                                    "(accuracy and F1 for a classification run).",
     "lmtune.cli.analysis:cmd_eval"),
    ("compare", CompareConfig, "A base and a fine-tuned model side by side: samples "
                                          "with the same seed, perplexity on --data and "
                                          "--reference.", "lmtune.cli.analysis:cmd_compare"),
    ("diff", DiffConfig, "How much fine-tuning changed each weight tensor and block "
                                    "(LoRA included, without merging).",
     "lmtune.cli.analysis:cmd_diff"),
    ("report", ReportConfig, "Write loss.png and a self-contained report.html for a "
                                        "run.", "lmtune.cli.analysis:cmd_report"),
    ("data inspect", InspectConfig, "What a data file becomes for a model: counts, "
                                               "lengths, padding waste, duplicates, warnings.",
     "lmtune.cli.data:cmd_inspect"),
    ("tokenizer stats", TokenizerStatsConfig, "Characters per token and byte-fallback share "
                                              "of one or several tokenizers on a data file.",
     "lmtune.cli.tokenizer:cmd_stats"),
    ("tokenizer extend", TokenizerExtendConfig, "Add a corpus's new pieces to a model's "
                                                "tokenizer (other text tokenizes as before) "
                                                "and grow its embedding to match.",
     "lmtune.cli.tokenizer:cmd_extend"),
]


class Parser(argparse.ArgumentParser):
    """No abbreviations (`--colum` is not `--column`, `--max-step` not `--max-steps`: a typo
    must not pass as a flag), and an unknown flag is named with the nearest real one, under
    the usage of the command it was given to."""

    def __init__(self, *args, **kwargs):
        kwargs["allow_abbrev"] = False
        super().__init__(*args, **kwargs)

    def refuse_unknown(self, extras: list[str]) -> None:
        flags = [a for a in extras if a.startswith("-")]
        if not flags:
            self.error(f"unexpected argument{'s' if len(extras) > 1 else ''}: "
                       f"{' '.join(extras)}")
        known = [o for a in self._actions for o in a.option_strings]
        typed = flags[0].split("=", 1)[0]
        close = difflib.get_close_matches(typed, known, n=1, cutoff=0.6)
        hint = f" (did you mean {close[0]}?)" if close else \
            f" (see lmtune {self.prog.split(' ', 1)[-1]} --help)"
        self.error(f"unknown option {typed}{hint}")


def build_parser() -> argparse.ArgumentParser:
    from lmtune.version import __version__

    parser = Parser(
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
        p.set_defaults(_cls=cls, _handler=handler, _parser=p)
    return parser
