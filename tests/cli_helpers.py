"""Running the command line in a test, and what a clean user error looks like: one `error:`
line, maybe a `hint:` line, exit code 2, no traceback, nothing on stdout. Shared by the CLI,
task and fault tests (tests/ is on the import path through its conftest)."""

from __future__ import annotations

from lmtune.cli import main


def run_cli(capsys, argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_clean_error(code: int, out: str, err: str, *needles: str) -> None:
    assert code == 2, err
    lines = err.splitlines()
    assert lines and lines[0].startswith("error: "), err
    assert len(lines) == 1 or (len(lines) == 2 and lines[1].startswith("hint: ")), err
    assert "Traceback" not in err and out == ""
    for needle in needles:
        assert needle in err, (needle, err)
