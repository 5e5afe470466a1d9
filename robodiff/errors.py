"""Errors that are the user's to fix: the CLI prints them as one line, without a traceback."""


class UserError(Exception):
    """Bad input (missing file, bad key, wrong shape). The message names the offender."""


class StoreError(UserError):
    """An episode store is malformed or cannot be opened."""


class ConfigError(UserError):
    """A config key is unknown, mistyped or inconsistent."""
