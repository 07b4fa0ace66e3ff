"""Errors a user can act on. Pure Python: the host side and the wire protocol use the same codes."""

from __future__ import annotations


class FrdmError(Exception):
    """Base of every error FRDM reports to a person. ``code`` is stable and travels on the wire."""

    code = "internal"


class InputError(FrdmError):
    """A file, frame, mask or parameter is wrong. The message names it and says what to do."""

    code = "bad_input"


class ParamError(InputError):
    """A parameter value is outside its schema."""

    code = "bad_param"


class WeightsError(FrdmError):
    """Model weights are missing, partial or of the wrong layout."""

    code = "bad_weights"


class CancelledError(FrdmError):
    """The job was cancelled between steps; nothing partial was written."""

    code = "cancelled"
