"""The project's one user-error type; the CLI turns it into one line and exit code 2."""

import re

_BREAKS = re.compile(r"\s*[\r\n]+\s*")


def one_line(text: str) -> str:
    """`text` with every line break (and the blanks around it) folded into one space."""
    return _BREAKS.sub(" ", str(text)).strip()


class MrRobustError(Exception):
    """Bad input or an impossible request. The message says what, where, and what to do."""

    def __str__(self) -> str:  # an h5py or OS message may carry newlines: one line, always
        return one_line(super().__str__())
