"""Errors that the HTTP layer turns into a 4xx answer with a message naming the problem."""
from model.errors import AesemoError


class RequestError(AesemoError):
    """The client's mistake; `status` is the HTTP status to answer."""

    def __init__(self, message: str, status: int = 400, details: list | None = None):
        super().__init__(message)
        self.status = status
        self.details = details or []
