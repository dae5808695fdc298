"""The base of every error the project raises on purpose: the message names the problem and the fix.

The CLI, the flows and the service catch `GanEnhanceError` instead of listing each kind; anything else is a bug
and keeps its traceback. Each subclass also derives from the builtin its callers expect (ValueError for bad
input, RuntimeError for a state that cannot go on)."""

from __future__ import annotations


class GanEnhanceError(Exception):
    """A known failure with a message that says what to change."""
