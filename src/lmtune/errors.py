"""User-facing errors.

A `UserError` is a mistake the user can fix (bad file, unknown model, bad flag). The CLI
prints it as one line plus an optional `hint:` line and exits with code 2; the Python API
raises it. Anything else is a bug in lmtune and keeps its traceback.
"""


class UserError(Exception):
    exit_code = 2

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message} (hint: {self.hint})"


class Stopped(BaseException):
    """SIGTERM or Ctrl-C ended a command outside a training step. A BaseException, as
    KeyboardInterrupt is, so that no `except Exception` on the way up swallows it; the
    atomic writers remove what they had half written as it passes."""

    def __init__(self, signum: int):
        import signal
        super().__init__(signal.Signals(signum).name)
        self.signum = signum
        self.exit_code = 128 + signum


def stop_on_signals() -> None:
    """SIGTERM raises Stopped wherever the main thread is (Ctrl-C already raises
    KeyboardInterrupt); a command then ends within moments at any stage, where the default
    action would kill it mid-write. Called by the CLI; a library leaves signals alone."""
    import signal
    import threading
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _raise_stopped)


def _raise_stopped(signum, frame) -> None:
    raise Stopped(signum)
