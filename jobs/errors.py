"""Errors a user can fix. The CLI prints their message as one line and exits non-zero."""


class FactoryError(Exception):
    """A mistake in input, configuration or invocation; the message names it and what to do."""


class GateFailed(FactoryError):
    """A day (or what it produced) failed a configured [gate]; nothing of it is published."""


class QuarantineShareExceeded(GateFailed):
    """Too many of a day's raw rows failed validation to trust the day."""


class DropRefused(GateFailed):
    """A day's drop is empty or larger than the gates allow; it was not read into the lake."""


class ConcurrentWriteError(FactoryError):
    """Another run changed a table while this step computed its write; rerunning the step is safe."""


class UnsafePath(FactoryError):
    """A table name, partition value or ds would address something outside the lake root."""
