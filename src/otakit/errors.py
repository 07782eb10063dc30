"""The errors otakit raises on purpose.

    OtakitError                      root; ``str(err)`` is one human sentence
    ├── ValidationError              bad input: a name, version, content.json, request part  (400)
    │   └── VerificationError        a download or package that is not what its content.json says
    ├── AuthError                    missing or wrong token                                  (401)
    ├── ForbiddenError               a valid token used where it gives no right              (403)
    ├── NotFoundError                no such package, branch, version or file                (404)
    ├── ConflictError                the version exists already                              (409)
    ├── TooLargeError                over a configured size limit                            (413)
    ├── ThrottledError               too many attempts; try again later                      (429)
    └── UnavailableError             the database or file store cannot be reached            (503)
        └── DownloadError            a server could not be reached or a transfer kept failing

Each class carries the HTTP status it maps to as ``status_code``; the server turns any of them into
``{"status": code, "error": str(err)}`` with the same HTTP status.
"""

from __future__ import annotations

__all__ = [
    "AuthError",
    "ConflictError",
    "DownloadError",
    "ForbiddenError",
    "NotFoundError",
    "OtakitError",
    "ThrottledError",
    "TooLargeError",
    "UnavailableError",
    "ValidationError",
    "VerificationError",
]


class OtakitError(Exception):
    status_code: int = 400


class ValidationError(OtakitError):
    status_code = 400


class AuthError(OtakitError):
    status_code = 401


class ForbiddenError(OtakitError):
    status_code = 403


class NotFoundError(OtakitError):
    status_code = 404


class ConflictError(OtakitError):
    status_code = 409


class TooLargeError(OtakitError):
    status_code = 413


class ThrottledError(OtakitError):
    status_code = 429


class UnavailableError(OtakitError):
    status_code = 503


class VerificationError(ValidationError):
    pass


class DownloadError(UnavailableError):
    pass
