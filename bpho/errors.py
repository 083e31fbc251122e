"""The errors bpho raises for a user's mistake or bad input.

The CLI prints any `BphoError` as one line on stderr and exits with code 2; anything
else is a bug and keeps its traceback.
"""


class BphoError(Exception):
    """Base class: a problem with the user's input, named in one line."""


class FileFormatError(BphoError):
    """A file that cannot be read as the image it claims to be."""


class InvalidNameError(BphoError):
    """A datasource or dataset name that is not allowed."""


class NotFoundError(BphoError):
    """A named thing (datasource, dataset, file) that does not exist."""


class IntegrityError(BphoError):
    """Registered data whose bytes changed after registration."""


class ConflictError(BphoError):
    """An operation that would overwrite something that must stay as it is."""


class BphoWarning(UserWarning):
    """Something the user should know that does not stop the work (e.g. an excluded pair)."""
