"""Errors a handler raises; http_middlewares turns each into {"error": {"code", "message", "details"}}."""


class ApiError(Exception):
    status = 500
    code = "internal_error"

    def __init__(self, message: str, details: dict | None = None):
        super().__init__(message)
        self.message = message
        self.details = details or {}


class BadRequest(ApiError):
    status, code = 400, "bad_request"


class Unauthorized(ApiError):
    status, code = 401, "unauthorized"


class Forbidden(ApiError):
    status, code = 403, "forbidden"


class NotFound(ApiError):
    status, code = 404, "not_found"

    def __init__(self, kind: str, ident: str):
        # Missing and not-yours read the same, so existence does not leak.
        super().__init__(f"no such {kind}", {"id": ident[:100]})


class Conflict(ApiError):
    status, code = 409, "conflict"


class ValidationFailed(ApiError):
    status, code = 422, "validation_failed"

    def __init__(self, field_errors: dict):
        super().__init__("request failed validation", {"fields": field_errors})


class DatabaseUnavailable(ApiError):
    """The database cannot be reached now: the client may retry after `retry_after` seconds."""
    status, code = 503, "database_unavailable"
    # About what the listener's reconnect backoff takes at most (listener_backoff_max_seconds).
    retry_after = 5

    def __init__(self):
        super().__init__("the database is unavailable; retry later")
