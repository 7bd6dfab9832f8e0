"""The errors `grpo` reports as one line instead of a traceback.

Every expected failure derives from ``UserError``; the CLI catches that base class alone, prints
``str(e)`` and exits with ``e.exit_code``:
    2  bad input: a config value, a flag, a file the user gave (``InputError`` and its kind)
    1  the run itself failed: the server crashed, the disk is full (``RunFailure`` and its kind)
Signals are not errors: Ctrl-C exits 130 and SIGTERM 143. ``grpo --debug`` (or GRPO_DEBUG=1)
shows the traceback of any of them.
"""

from __future__ import annotations


class UserError(Exception):
    """An expected failure; str() is the one line shown to the user."""

    exit_code = 2


class InputError(UserError):
    """Bad input: a config value, a flag, a file or folder the user gave. Exit code 2."""

    exit_code = 2


class RunFailure(UserError):
    """The run failed for a reason outside the user's input (a server crash, a full disk). Exit code 1."""

    exit_code = 1
