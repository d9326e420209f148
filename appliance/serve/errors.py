"""Errors in the shape OpenAI clients parse: `{"error": {"message", "type", "param", "code"}}`.

Client libraries raise typed exceptions from the status code and show `message`, so every
refusal says exactly what was wrong and, where one field is to blame, names it in `param`.
"""

from dataclasses import dataclass
from typing import Any


@dataclass
class ApiError(Exception):
    """A request the API refuses (or could not serve), with its HTTP status."""

    status: int
    message: str
    type: str = "invalid_request_error"
    param: str | None = None
    code: str | None = None
    headers: dict[str, str] | None = None

    def __str__(self) -> str:
        return self.message

    def body(self) -> dict[str, Any]:
        """The JSON body of the error response."""
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


def bad_request(message: str, param: str | None = None, code: str | None = None) -> ApiError:
    """400: the request itself is wrong."""
    return ApiError(400, message, param=param, code=code)


def server_error(message: str) -> ApiError:
    """500: the model failed on a request it accepted."""
    return ApiError(500, message, type="server_error", code="internal_error")
