"""The one error type for bad input: a config value, a file or a flag the user can fix."""

from __future__ import annotations


class ConfigError(ValueError):
    """A bad config value; the message is one line naming the key, the value and what is allowed.

    Commands print it as ``<command>: error: <message>`` and exit with status 2, before any
    expensive work.
    """
