"""The one exception tree of gatewayd.

    GatewaydError                      every error gatewayd raises on purpose; carries a user-facing message
    ├── ConfigError                    the config file (or an override) is invalid; carries every ConfigIssue
    ├── InstanceError                  about the running instance, for the CLI and the run loop
    │   ├── AlreadyRunning             another healthy instance holds the port lock
    │   ├── NotRunning                 no instance found in the state directory
    │   └── StartupError               a generation could not start (at start: the process exits; at a
    │                                  reload: the old one keeps serving); says what failed and the fix
    ├── ReloadError                    a reload or respawn failed (the old generation keeps serving)
    │   └── StandbyUnavailable         the warm standby cannot take a respawn: a child is started cold
    ├── StoreError                     the key/usage store cannot be used (cannot open, locked, corrupt)
    │   └── KeyNotFound                no key matches the id, prefix or name given
    └── RequestError                   a request failed; carries the HTTP status and the error's type/code
        ├── BadRequest                 400: malformed JSON, missing model, wrong field types
        │   └── Unsupported            400: the backend cannot do what the request asks (no infill, n > 1)
        ├── PayloadTooLarge            413: body over ``server.max_body_bytes``
        ├── ModelNotFound              404: no route and no discovered backend serves the model
        ├── NotFound                   404: no such endpoint
        ├── HttpError                  another HTTP-level refusal by the web framework (405, 400...)
        ├── Overloaded                 429 (OpenAI) / 503 (Ollama): queue full or queue wait timed out
        ├── Unauthorized               401: keys are required and none (or no valid one) was sent
        ├── AdminRequired              403: an admin endpoint without the admin token
        ├── AccessRefused              403: a Host that is not this machine, or a page of another site
        ├── KeyLimitError              the caller's key does not allow this request; carries response headers
        │   ├── ModelNotAllowed        403: the model is not on the key's allow-list
        │   ├── BudgetExceeded         402: the key has used its token budget
        │   └── RateLimited            429: over the key's requests/tokens per minute or requests at once
        ├── Draining                   503: the gateway is restarting or stopping (a reload, a drain)
        ├── InternalError              500: a bug in gatewayd; the request id leads to its traceback
        └── BackendError               the upstream failed
            ├── BackendUnavailable     503: cannot connect, backend down or in cooldown
            │   └── BackendRefused     the connection was refused or reset: nothing listens there now
            ├── BackendTimeout         504: connect / first-byte / idle / total timeout
            ├── BadGateway             502: the backend answered garbage
            │   └── BackendReported    502: the backend reported an error in band (a model's answer)
            └── UpstreamStatus         the backend answered an HTTP error; its status is passed on

A ``RequestError`` knows its HTTP status and an OpenAI-style ``type``/``code``; the gateway renders it in the
endpoint's dialect (OpenAI error object on /v1, ``{"error": ...}`` on /api). CLI-facing errors carry
``exit_code``; only ``gatewayd.cli`` turns them into an exit.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_NOT_RUNNING = 3
#: BSD sysexits EX_CONFIG. The shipped systemd unit lists it in RestartPreventExitStatus= so that systemd
#: stops restarting a unit whose port is held by a healthy instance (see AlreadyRunning).
EXIT_ALREADY_RUNNING_UNDER_SYSTEMD = 78


class GatewaydError(Exception):
    """Base of every error gatewayd raises on purpose."""

    exit_code: int = EXIT_FAILURE

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


@dataclass(frozen=True, slots=True)
class ConfigIssue:
    """One problem in a config source, located as precisely as the source allows."""

    source: str  #: file path, or a name such as "GATEWAYD_PORT" for an environment override
    message: str
    line: int | None = None  #: 1-based line in ``source`` when it is a file
    key: str | None = None  #: dotted path of the offending key, e.g. "backends[1].max_concurency"
    hint: str | None = None  #: how to fix it, e.g. "did you mean 'max_concurrency'?"

    def __str__(self) -> str:
        where = self.source if self.line is None else f"{self.source}:{self.line}"
        key = f" {self.key}:" if self.key else ""
        hint = f" ({self.hint})" if self.hint else ""
        return f"{where}:{key} {self.message}{hint}"


class ConfigError(GatewaydError):
    """The config is invalid. ``issues`` lists every problem found, not just the first."""

    exit_code = EXIT_FAILURE

    def __init__(self, issues: list[ConfigIssue]) -> None:
        self.issues = list(issues)
        count = len(self.issues)
        lines = "\n".join(f"  {issue}" for issue in self.issues)
        super().__init__(f"invalid config ({count} problem{'s' if count != 1 else ''}):\n{lines}")


class InstanceError(GatewaydError):
    """About the running instance (lock, pid, state directory)."""


class AlreadyRunning(InstanceError):
    """Another healthy instance holds the port lock."""

    def __init__(self, message: str, *, pid: int | None) -> None:
        super().__init__(message)
        self.pid = pid


class NotRunning(InstanceError):
    """No running instance was found in the state directory."""

    exit_code = EXIT_NOT_RUNNING


class StartupError(InstanceError):
    """A generation could not start: the first one (the process exits 1), or a reload's (the serving one
    keeps serving). The message names what failed (the backend, when one did) and how to fix it."""


class ReloadError(GatewaydError):
    """A reload or respawn failed; the generation that was serving keeps serving."""


class StandbyUnavailable(ReloadError):
    """The warm standby cannot take a respawn (it exited, or did not say it waits in time): the respawn
    starts a child cold instead."""


class StoreError(GatewaydError):
    """The key/usage store (SQLite in the state directory) cannot be used: it cannot be opened, is locked
    by another process past the busy timeout, is corrupt, or was written by a newer gatewayd. Also raised for
    a key reference that matches more than one key."""


class KeyNotFound(StoreError):
    """No key matches the id, prefix or name given."""

    exit_code = EXIT_FAILURE

    def __init__(self, ref: str) -> None:
        super().__init__(f"no key matches '{ref}' (list the keys with 'gatewayd keys list')")
        self.ref = ref


class RequestError(GatewaydError):
    """A request failed. Rendered by the gateway in the endpoint's dialect."""

    status: int = 500
    #: OpenAI error ``type``
    type: str = "server_error"
    #: OpenAI error ``code`` (None when OpenAI would send null)
    code: str | None = None

    def __init__(self, message: str, *, param: str | None = None, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.param = param
        #: seconds; rendered as a Retry-After header when set
        self.retry_after = retry_after


class BadRequest(RequestError):
    status = 400
    type = "invalid_request_error"


class Unsupported(BadRequest):
    """The backend chosen cannot do what the request asks (fill in the middle, several choices), and
    answering without it would silently change the request. The relay tries the next candidate, and
    names the backends in the message when none can."""

    code = "unsupported_by_backend"


class PayloadTooLarge(RequestError):
    status = 413
    type = "invalid_request_error"
    code = "request_too_large"


class HttpError(RequestError):
    """An HTTP-level refusal that is not about the request's content (405 for a wrong method, 409 for an
    admin action that conflicts with the backend's state, 503 for a store that cannot be used)."""

    def __init__(self, message: str, *, status: int, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.type = "invalid_request_error" if status < 500 else "server_error"
        self.code = code


class ModelNotFound(RequestError):
    status = 404
    type = "invalid_request_error"
    code = "model_not_found"


class NotFound(RequestError):
    status = 404
    type = "invalid_request_error"
    code = "not_found"


class Overloaded(RequestError):
    """Queue full or wait timed out. OpenAI clients get 429 (and retry); Ollama's own answer is 503."""

    status = 429
    type = "rate_limit_error"
    code = "gateway_overloaded"
    ollama_status = 503


class Unauthorized(RequestError):
    """401. The message never says whether a key exists, nor echoes it."""

    status = 401
    type = "invalid_request_error"
    code = "invalid_api_key"


class AdminRequired(RequestError):
    status = 403
    type = "invalid_request_error"
    code = "admin_token_required"


class AccessRefused(RequestError):
    """A request whose Host does not name this machine (DNS rebinding), or that a browser sent on behalf of
    a page of another site. ``code``: "host_not_allowed" or "cross_site_request"."""

    status = 403
    type = "invalid_request_error"

    def __init__(self, message: str, *, code: str) -> None:
        super().__init__(message)
        self.code = code


class KeyLimitError(RequestError):
    """The caller's key does not allow this request. ``headers`` (``x-ratelimit-*``, lower-case names) go on
    the error response as they are; ``retry_after`` is rendered as Retry-After."""

    def __init__(
        self,
        message: str,
        *,
        retry_after: float | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message, retry_after=retry_after)
        self.headers: Mapping[str, str] = dict(headers or {})


class ModelNotAllowed(KeyLimitError):
    status = 403
    type = "invalid_request_error"
    code = "model_not_allowed"


class BudgetExceeded(KeyLimitError):
    """The key's token budget is spent (no Retry-After: it does not come back by waiting). OpenAI's quota
    error type; 402 in both dialects."""

    status = 402
    type = "insufficient_quota"
    code = "budget_exceeded"


class RateLimited(KeyLimitError):
    """Over one of the key's rate limits. ``limit`` names it: "requests" (per minute), "tokens" (per
    minute) or "concurrency" (requests at once); the OpenAI ``type`` is "tokens" or "requests", as OpenAI's
    own rate-limit errors have it. 429 in both dialects."""

    status = 429
    code = "rate_limit_exceeded"

    def __init__(
        self,
        message: str,
        *,
        limit: str,
        retry_after: float | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message, retry_after=retry_after, headers=headers)
        self.limit = limit
        self.type = "tokens" if limit == "tokens" else "requests"


#: Retry-After of a request cut by the gateway's own restart: the next generation is usually serving by then
DRAINING_RETRY_AFTER_SECONDS = 1.0
#: what a client whose request was cut by a reload, a respawn or a stop is told
RESTARTING_MESSAGE = "the gateway is restarting or shutting down; retry the request"


class Draining(RequestError):
    """The request was refused or cut because its generation is going away (a reload, a respawn, a stop):
    nothing the client or a backend did wrong, hence 503 with Retry-After in every dialect."""

    status = 503
    type = "server_error"
    code = "gateway_draining"

    def __init__(
        self, message: str = RESTARTING_MESSAGE, *, retry_after: float = DRAINING_RETRY_AFTER_SECONDS
    ) -> None:
        super().__init__(message, retry_after=retry_after)


class InternalError(RequestError):
    """An exception gatewayd did not expect while serving a request. The client sees only the request id
    (the traceback goes to the log, once)."""

    status = 500
    type = "server_error"
    code = "internal_error"

    def __init__(self, request_id: str) -> None:
        super().__init__(
            f"internal error in gatewayd (request id {request_id}); its log has the details under that id"
        )


class BackendError(RequestError):
    """The upstream failed. ``backend`` names it when known."""

    status = 502
    type = "server_error"
    code = "backend_error"

    def __init__(
        self,
        message: str,
        *,
        backend: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, retry_after=retry_after)
        self.backend = backend


class BackendUnavailable(BackendError):
    status = 503
    code = "backend_unavailable"


class BackendRefused(BackendUnavailable):
    """The backend refused the connection or reset it before answering: nothing listens at its address now.
    For a server gatewayd runs (or wakes), the cue to look at it at once rather than at the next poll."""


class BackendTimeout(BackendError):
    status = 504
    code = "backend_timeout"


class BadGateway(BackendError):
    status = 502
    code = "bad_gateway"


class BackendReported(BadGateway):
    """The backend answered, with an error event in its stream (or an error object in a 200 answer): the
    model's answer, not a failure of the backend, so it does not count against the backend's health
    (as an error relayed byte for byte in the client's own dialect does not either)."""

    code = "upstream_error"


class UpstreamStatus(BackendError):
    """The backend answered an HTTP error. ``status`` and ``body`` are the backend's own, and so are
    ``headers``: the ones a client acts on (``retry-after``, ``x-ratelimit-*``; lower-case names), passed
    on with the error response."""

    code = "upstream_error"

    def __init__(
        self,
        message: str,
        *,
        status: int,
        body: bytes,
        backend: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message, backend=backend)
        self.status = status
        self.body = body
        self.headers: Mapping[str, str] = dict(headers or {})
