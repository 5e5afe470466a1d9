"""Errors that are the user's to fix: the CLI prints them as one line, without a traceback."""


class UserError(Exception):
    """Bad input (missing file, bad key, wrong shape). The message names the offender."""


class StoreError(UserError):
    """An episode store is malformed or cannot be opened."""


class NotAStoreError(StoreError):
    """The path is not an episode store at all (a foreign dataset may be imported from it), as
    opposed to an episode store that is damaged."""


class ConfigError(UserError):
    """A config key is unknown, mistyped or inconsistent."""


def one_line(exc: BaseException) -> str:
    """An exception as one line: its type and its message's lines joined (a child process's
    error, reported by its parent)."""
    return f"{type(exc).__name__}: {' '.join(line.strip() for line in str(exc).splitlines() if line.strip())}"
