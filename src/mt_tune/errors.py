"""Error types the CLI maps onto exit statuses.

UserError (and subclasses) mean bad input: the CLI prints the message and exits 2, no
traceback. Anything else that escapes a command is a runtime failure: exit 1.
"""


class UserError(Exception):
    """Bad input: a config, spec, corpus, argument, storage URL or checkpoint."""


class ConfigError(UserError):
    """A config or study spec that fails validation; the message names the key."""


class DataError(UserError):
    """A corpus that cannot be used; the message names the file and line."""
