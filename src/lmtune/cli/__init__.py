"""The command line: argument parsing (parser.py), dispatch and errors (main.py), and one
module of `cmd_*` handlers per group of commands. Handlers print; everything they call is a
library function that prints nothing, the same the Python API (lmtune.api) calls."""

from lmtune.cli.main import main, run

__all__ = ["main", "run"]
