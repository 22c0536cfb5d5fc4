"""Domain errors of the serving layer, mapped to HTTP (OpenAI's error shape) and gRPC at the edges."""

from __future__ import annotations


class ServingError(Exception):
    """A request the serving layer refuses or failed; the message is the caller's."""

    status = 500
    type = "server_error"
    code: str | None = "internal_error"

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None,
                 retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        self.retry_after_s = retry_after_s

    def body(self) -> dict:
        """OpenAI's error format."""
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class BadRequest(ServingError):
    status = 400
    type = "invalid_request_error"
    code = "invalid_request"


class ModelNotFound(ServingError):
    status = 404
    type = "invalid_request_error"
    code = "model_not_found"


class Forbidden(ServingError):
    """Residency policy forbids processing the request's data class here."""

    status = 403
    type = "permission_error"
    code = "data_residency"


class Overloaded(ServingError):
    """Shed by the scheduler (sheddable class under load) or queue full: retry later."""

    status = 503
    type = "server_error"
    code = "overloaded"


class Unavailable(ServingError):
    status = 503
    type = "server_error"
    code = "unavailable"


class UpstreamError(ServingError):
    """The external model server failed."""

    status = 502
    type = "server_error"
    code = "upstream_error"
