"""Errors a user can fix. The CLI prints their message as one line and exits non-zero."""


class FactoryError(Exception):
    """A mistake in input, configuration or invocation; the message names it and what to do."""


class QuarantineShareExceeded(FactoryError):
    """Too many of a day's raw rows failed validation to trust the day."""
