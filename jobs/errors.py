"""Errors a user can fix. The CLI prints their message as one line and exits non-zero."""


class FactoryError(Exception):
    """A mistake in input, configuration or invocation; the message names it and what to do."""


class GateFailed(FactoryError):
    """A day (or what it produced) failed a configured [gate]; nothing of it is published.

    `gate` names the check that refused (publish's gates: docs/reliability.md), so a caller (the fault
    scenarios, the day's MLflow run) can tell one refusal from another without parsing the sentence."""

    default_gate = "gate"

    def __init__(self, message: str, gate: str = ""):
        super().__init__(message)
        self.gate = gate or self.default_gate


class QuarantineShareExceeded(GateFailed):
    """Too many of a day's raw rows failed validation to trust the day."""

    default_gate = "quarantine_share"


class DropRefused(GateFailed):
    """A day's drop is empty or larger than the gates allow; it was not read into the lake."""

    default_gate = "drop"


class DropMissing(FactoryError):
    """A day's drop folder has not landed (yet); the DAG's sensor waits for it, a step fails."""


class ConcurrentWriteError(FactoryError):
    """Another run changed a table while this step computed its write; rerunning the step is safe."""


class UnsafePath(FactoryError):
    """A table name, partition value or ds would address something outside the lake root."""
