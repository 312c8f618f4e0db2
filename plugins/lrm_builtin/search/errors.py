"""A bad search / annotator setting: a UserError (``lrm`` prints one line and exits 2) that is
also a ValueError (what the Python embedding and the tests catch)."""

from lrm_engine.errors import UserError


class SettingError(UserError, ValueError):
    """A search or annotator option with a value it cannot take; the message names the fix."""
