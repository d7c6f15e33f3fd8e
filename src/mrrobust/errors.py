"""The project's one user-error type; the CLI turns it into one line and exit code 2."""


class MrRobustError(Exception):
    """Bad input or an impossible request. The message says what, where, and what to do."""
