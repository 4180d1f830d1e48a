"""What the domain code raises when a request cannot be done, named for the reason, not for a
protocol. The HTTP layer picks each one's status in one table (backend/http/errors.py)."""
from model.errors import AesemoError


class DomainError(AesemoError):
    """A refusal with a message naming the problem and, optionally, one detail per item."""

    def __init__(self, message: str, details: list | None = None):
        super().__init__(message)
        self.details = details or []


class InvalidInput(DomainError):
    """The caller sent something malformed or out of range."""


class NotFound(DomainError):
    """No such project, job, version or file."""


class Conflict(DomainError):
    """Valid, but the current state does not allow it (too few labels, a refused version...)."""


class Unprocessable(DomainError):
    """Well formed, but nothing can be made of it (a label config we cannot use, no image)."""


class TooLarge(DomainError):
    """Over a size limit."""


class Unavailable(DomainError):
    """Cannot be done now (Redis down, no model loadable); may work later."""


class UpstreamError(DomainError):
    """Label Studio, which this depends on, failed."""
