"""The exceptions of hovercrypt, in one module, and the exit code the scripts give for them.

Both are ``ValueError`` subclasses, so code that guards a computation against bad values also
catches them; the scripts catch :class:`UserError` and exit with :data:`USER_ERROR_EXIT`.
"""

from __future__ import annotations

#: exit code of every script for bad input or options (a run where some images or slides
#: failed but the others finished exits with 1 instead)
USER_ERROR_EXIT = 2


class UserError(ValueError):
    """Something the user can fix: the message names the file or option and the problem."""


class InputError(UserError):
    """Bad user input (a file, a folder, a command-line option); the message names it."""


class ConfigError(UserError):
    """A configuration value is invalid; the message names the field."""
