"""The one exception type for bad dataset input."""

from __future__ import annotations

import os


class DatasetError(ValueError):
    """Bad dataset input: a missing folder, an unparsable list line, a corrupt image...

    Every message starts with the file or folder at fault, so a user can go and fix it.
    """

    def __init__(self, path: str | os.PathLike[str], message: str) -> None:
        self.path = os.fspath(path)
        super().__init__(f"{self.path}: {message}")
