"""The errors aurora_smartdriver raises itself.

`AuroraSmartDriverError` is the base of every error the library defines. Configuration mistakes
are `ConfigError`, which is also a `ValueError` so code that already guards against bad
arguments catches it.

The failover errors (`FailoverSucceeded`, `TransactionOutcomeUnknown`, `NoWriterAvailable`) belong
in this module too, but each must also subclass the wrapped driver's own `OperationalError` so
that existing `except driver.OperationalError` clauses keep catching them; they are therefore
built per driver from the driver's exception class rather than declared here once.
"""

from __future__ import annotations

__all__ = ["AuroraSmartDriverError", "ConfigError"]


class AuroraSmartDriverError(Exception):
    """Base of the errors defined by aurora_smartdriver."""


class ConfigError(AuroraSmartDriverError, ValueError):
    """A DSN, parameter or keyword argument the library cannot accept.

    The message names what was wrong, shows the offending value (secrets masked) and, when there
    is one, says what to do instead; the same facts are kept as attributes so tools can show them
    without parsing the message.
    """

    parameter: str | None
    """The parameter at fault, when one is."""
    value: str | None
    """The offending value as text, already masked when the parameter is secret."""
    suggestion: str | None
    """What to do instead (e.g. "did you mean 'pool_max_size'?"), also part of the message."""

    def __init__(
        self,
        message: str,
        *,
        parameter: str | None = None,
        value: str | None = None,
        suggestion: str | None = None,
    ) -> None:
        super().__init__(f"{message}; {suggestion}" if suggestion else message)
        self.parameter = parameter
        self.value = value
        self.suggestion = suggestion
