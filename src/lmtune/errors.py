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
