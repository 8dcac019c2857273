"""Typed errors for domain failures. Each layer raises these; the edges turn them into
HTTP answers, CLI exit codes or retries."""

from __future__ import annotations


class WatcherError(Exception):
    """Base of every error the daemon raises on purpose."""


class ConfigError(WatcherError):
    """A configuration that cannot be used. `problems` holds one line per problem,
    each starting with the key path (`networks.local.tokens.0.address: not an EVM address`)."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("; ".join(problems))


class AmountError(WatcherError, ValueError):
    """A decimal amount string that is not a valid amount for its asset."""


class ApiError(WatcherError):
    """An error answered to an API or CLI caller."""

    status = 400
    code = "bad_request"

    def __init__(self, message: str, field: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        if code is not None:
            self.code = code

    def to_json(self) -> dict[str, object]:
        return {"error": {"code": self.code, "message": self.message, "field": self.field}}


class BadRequest(ApiError):
    status = 400
    code = "bad_request"


class Unauthorized(ApiError):
    status = 401
    code = "unauthorized"


class NotFound(ApiError):
    status = 404
    code = "not_found"


class Conflict(ApiError):
    status = 409
    code = "conflict"


class Gone(ApiError):
    """The thing asked for existed but is no longer kept (an event body pruned by
    retention)."""

    status = 410
    code = "gone"


class PayloadTooLarge(ApiError):
    status = 413
    code = "payload_too_large"


class Unavailable(ApiError):
    """The request is right but cannot be served yet (a network whose follower has not
    written its start block)."""

    status = 503
    code = "unavailable"


class Invalid(ApiError):
    status = 422
    code = "invalid"


class RpcError(WatcherError):
    """An RPC call failed. `retryable` tells whether the same call may succeed later."""

    retryable = True

    def __init__(self, message: str, *, url: str | None = None, method: str | None = None) -> None:
        super().__init__(message)
        self.url = url
        self.method = method


class RpcRetryable(RpcError):
    """Connection error, timeout, 429, 5xx, truncated or malformed answer."""

    retryable = True

    def __init__(
        self,
        message: str,
        *,
        url: str | None = None,
        method: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, url=url, method=method)
        self.retry_after = retry_after


class RpcFatal(RpcError):
    """An answer that will not change on retry (bad params, method not found)."""

    retryable = False


class RangeTooLarge(RpcFatal):
    """`eth_getLogs` refused the block range; `suggested` is the provider's hint, if any."""

    def __init__(
        self, message: str, *, suggested: tuple[int, int] | None = None, url: str | None = None
    ) -> None:
        super().__init__(message, url=url, method="eth_getLogs")
        self.suggested = suggested


class ChainIdMismatch(RpcFatal):
    """An RPC URL answers a chain id other than the configured one."""


class StoreError(WatcherError):
    """The database cannot be used (locked, read-only, disk full, unreachable)."""


class StoreRefused(StoreError):
    """The database cannot be used and retrying will not help: credentials refused, a
    schema newer than the code. The CLI exits 2 (systemd does not restart it)."""


class NotLeader(WatcherError):
    """Several instances on PostgreSQL: this one no longer leads the network it was about
    to commit for (`cluster.fence`); the commit is rolled back and the follower stops."""
