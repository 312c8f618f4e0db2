"""Errors a user can cause and fix (bad option value, missing file, ...).

The ``lrm`` command prints them as one line naming the fix, without a traceback, and exits 2.
"""


class UserError(Exception):
    """A mistake in the configuration or the inputs; the message names the fix."""
