"""The one error for users' mistakes: every layer raises it, the entry points print it as one line."""

from __future__ import annotations


class UserError(ValueError):
    """A problem with the user's input or settings: the message names it and the fix.

    The command line and the scripts print these as one message, not a traceback.
    """
