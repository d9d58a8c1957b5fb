"""Errors that reach the user: each names the file or key at fault and what was expected."""


class MerfishflowError(Exception):
    """Base class of every error merfishflow raises on purpose."""


class InputError(MerfishflowError, ValueError):
    """Bad input: a config key, a raw_data file or a datastore entry is missing or malformed."""


class IncompleteDataError(MerfishflowError):
    """A datastore entry exists but is not marked complete (a crashed or running job)."""
