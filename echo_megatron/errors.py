"""The one exception family the CLI turns into a one-line message and exit status 2.

Anything a user can fix by changing a recipe, an override, an argument, an input file or the machine's setup
raises a subclass of :class:`UserError` with a message that names the culprit (the key, file, line or knob).
Everything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """A problem with the user's input or environment, told in one line."""
