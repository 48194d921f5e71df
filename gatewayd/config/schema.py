"""Frozen, typed config values. Every field has a default; units are in the names.

The loader (``gatewayd.config.loader``) builds these from YAML, rejecting unknown keys and wrong types with
file/line/key messages. Nothing here performs IO.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

KIB = 1024
MIB = 1024 * KIB

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8484


class BackendKind(enum.StrEnum):
    OPENAI = "openai"  # any OpenAI-compatible API (hosted or local)
    LLAMA_SERVER = "llama-server"  # llama.cpp's llama-server: OpenAI dialect plus /health, /slots, /metrics
    OLLAMA = "ollama"  # Ollama's native API (/api/*)
    VLLM = "vllm"  # vLLM's OpenAI-compatible server: OpenAI dialect plus /health, /metrics
    ANTHROPIC = "anthropic"  # Anthropic's Messages API (hosted, or a local server that speaks it natively)


class RestartMode(enum.StrEnum):
    IN_PROCESS = "in-process"  # swap the app generation behind the one listening socket
    RESPAWN = "respawn"  # start a child with a fresh PID that inherits the socket and the lock


class AuthMode(enum.StrEnum):
    OFF = "off"  # no keys asked for: allowed only on a loopback address
    KEYS = "keys"  # every request but /healthz needs a valid key (Authorization: Bearer ...)


class LogFormat(enum.StrEnum):
    TEXT = "text"
    JSON = "json"


@dataclass(frozen=True, slots=True)
class ServerSettings:
    """The listening socket and per-connection limits."""

    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    #: listen() backlog; hypercorn's own backlog is set equal so it cannot silently lower it
    backlog: int = 1024
    #: request bodies larger than this are refused with 413
    max_body_bytes: int = 16 * MIB
    #: idle keep-alive connections are closed after this long
    keep_alive_timeout_seconds: float = 75.0
    #: Host names (or addresses) requests may name besides loopback and the listen address; "*": any
    allowed_hosts: tuple[str, ...] = ()
    #: origins (scheme://host[:port]) of web pages on other sites that may call gatewayd (CORS); "*": any
    cors_origins: tuple[str, ...] = ()
    #: a connection whose request head (request line and headers) is not complete this long after its accept,
    #: or after the first byte of its next request, is closed. Bodies and responses are not bounded by it.
    header_timeout_seconds: float = 10.0
    #: open client connections at most; at the cap a new connection closes the oldest one that has sent no
    #: complete request head (else the oldest idle one), or is refused with 503 while all are busy.
    #: None: derived from the open-file limit (half of it less 256 descriptors, at most 4096)
    max_connections: int | None = None
    #: request JSON nested deeper than this (arrays and objects) is refused with 400
    max_json_depth: int = 128
    #: this instance's name in the fleet (the X-Gatewayd-Instance header, /status); None: the machine's
    #: host name and the port, "host:port"
    instance_name: str | None = None


@dataclass(frozen=True, slots=True)
class ShutdownSettings:
    """How a stop (SIGTERM/SIGINT) is bounded. (The drain of a generation retired by a reload is bounded by
    ``restart.drain_timeout_seconds``.)"""

    #: in-flight requests and streams may finish within this long; then streams get a shutdown event
    drain_timeout_seconds: float = 20.0
    #: after stop begins, the process exits 1 with a diagnostic bundle if still alive after this long.
    #: Keep it below the service manager's stop budget (TimeoutStopSec=30 / ExitTimeOut=30 as shipped).
    force_exit_seconds: float = 25.0
    #: after accepting stops, wait this long before closing the listener (asyncio's accept race)
    accept_settle_seconds: float = 0.05


@dataclass(frozen=True, slots=True)
class RestartSettings:
    """How SIGUSR1 reloads."""

    mode: RestartMode = RestartMode.IN_PROCESS
    #: a respawned child must report ready within this long, else it is killed and we restart in process
    respawn_ready_timeout_seconds: float = 15.0
    #: after the child is ready, the old process answers with ``Connection: close`` for this long so
    #: keep-alive clients move to the child before the old process drains
    handoff_close_seconds: float = 1.0
    #: after a reload (or a respawn's handoff) the old generation's requests may finish within this long;
    #: then its streams get a shutdown event. Above the longest a request can last (queue wait + connect +
    #: first byte + total: 2,165 s with the defaults) a reload never cuts a request. A stop (SIGTERM)
    #: arriving meanwhile shortens it to ``shutdown.drain_timeout_seconds``.
    drain_timeout_seconds: float = 2400.0
    #: keep a warm standby: a process started ahead, imported, waiting to take the next respawn (it costs
    #: the memory of one idle process, shown in /status); off under launchd, which never respawns
    warm_standby: bool = False


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Upstream timeouts. Each is a separate bound; None means no bound."""

    connect_seconds: float = 5.0
    #: from sending the request to the first byte of the response (prompt processing counts here)
    first_byte_seconds: float = 300.0
    #: longest gap between two chunks of a streamed response
    idle_seconds: float = 120.0
    #: whole request, first byte to last
    total_seconds: float | None = 1800.0


@dataclass(frozen=True, slots=True)
class Limits:
    """Admission: per-backend queue, and how many backends a request may try."""

    #: requests waiting for a free slot on one backend; beyond it: 429 (OpenAI) / 503 (Ollama)
    queue_size: int = 256
    #: longest wait for a free slot before the same answer
    queue_timeout_seconds: float = 60.0
    #: backends tried per request (first try plus fallbacks) before giving up
    max_attempts: int = 3
    #: Retry-After sent with 429/503 for a full queue
    retry_after_seconds: float = 1.0


@dataclass(frozen=True, slots=True)
class HealthSettings:
    """Backend probing and passive failure detection."""

    #: probe period while requests flow through the backend
    probe_interval_busy_seconds: float = 2.0
    #: probe period while it is idle
    probe_interval_idle_seconds: float = 15.0
    probe_timeout_seconds: float = 2.0
    #: consecutive failed requests or probes that put a backend in cooldown (DOWN)
    failure_threshold: int = 3
    #: a DOWN backend is skipped for this long, then probed again
    cooldown_seconds: float = 10.0


@dataclass(frozen=True, slots=True)
class DiscoverySettings:
    """Zero-config discovery of model servers already running on loopback."""

    #: None = on when the config declares no backends; True/False forces it
    enabled: bool | None = None
    host: str = "127.0.0.1"
    #: ports probed, and the kind expected on each (Ollama, llama-server, LM Studio, vLLM)
    ports: tuple[tuple[int, BackendKind], ...] = (
        (11434, BackendKind.OLLAMA),
        (8080, BackendKind.LLAMA_SERVER),
        (1234, BackendKind.OPENAI),
        (8000, BackendKind.VLLM),
    )
    interval_seconds: float = 30.0
    #: an unknown model triggers at most one inventory refresh per this long
    refresh_min_interval_seconds: float = 2.0


@dataclass(frozen=True, slots=True)
class LoggingSettings:
    level: str = "info"
    format: LogFormat = LogFormat.TEXT
    #: one structured line per request
    access_log: bool = True


@dataclass(frozen=True, slots=True)
class Wake:
    """How to wake a backend that sleeps on its own (a remote box, a server behind Wake-on-LAN): an HTTP
    request, a command, or both. The backend is then polled until ready, as a managed one is."""

    #: request sent to wake it (e.g. a power controller's API)
    url: str | None = None
    method: str = "POST"
    #: request body, sent as is
    body: str | None = None
    #: argv run to wake it (e.g. ["wakeonlan", "aa:bb:cc:dd:ee:ff"] or an ssh command); must exit 0
    command: tuple[str, ...] | None = None
    #: bound on the wake request or command itself (the wait for readiness is start_timeout_seconds)
    timeout_seconds: float = 30.0


@dataclass(frozen=True, slots=True)
class Backend:
    """One upstream model server."""

    id: str
    #: API base. For OpenAI-dialect kinds a trailing /v1 is accepted: "http://h:8080" and "http://h:8080/v1"
    #: both reach "http://h:8080/v1/chat/completions". A managed backend may leave it out (it is then
    #: "http://127.0.0.1:${PORT}") or use ${PORT} in it.
    url: str = ""
    kind: BackendKind = BackendKind.OPENAI
    #: models it serves; None = discovered from the backend (/v1/models or /api/tags)
    models: tuple[str, ...] | None = None
    #: concurrent requests sent to it; more wait in the queue. None = learned from the backend
    #: (llama-server's slots), else its kind's default (4 for Ollama), unbounded for openai and vllm
    max_concurrency: int | None = None
    #: literal, or "env:NAME" to read it from the environment at load time (never logged)
    api_key: str | None = field(default=None, repr=False)
    #: tie-breaker among candidates with the same free capacity; higher wins
    weight: float = 1.0
    #: the loader fills this from the top-level ``timeouts`` overlaid with the backend's own ``timeouts:``
    #: keys, so it is always complete
    timeouts: Timeouts = Timeouts()

    # -- managed backends: gatewayd runs the server itself (see ManagedSettings) --------------------------

    #: argv of the server; None = not managed. Placeholders: ${PORT} (a free loopback port gatewayd picks
    #: once and keeps), ${HOST} (127.0.0.1), ${MODEL_PATH} (model_path), ${ID} (the backend id)
    command: tuple[str, ...] | None = None
    #: set over gatewayd's environment for the command
    env: tuple[tuple[str, str], ...] = ()
    cwd: str | None = None
    #: what ${MODEL_PATH} stands for
    model_path: str | None = None
    #: GET path that answers 200 once the server can serve; None = the kind's health endpoint
    #: (/health for llama-server and vLLM, /api/version for Ollama, /v1/models otherwise)
    ready_path: str | None = None
    #: a start (or wake) must be ready within this long, else every waiter gets a 503 saying why
    start_timeout_seconds: float = 120.0
    #: stopped after this long without requests; 0 = never
    idle_ttl_seconds: float = 900.0
    #: sent to its process group to stop it; then SIGKILL after stop_timeout_seconds
    stop_signal: str = "SIGTERM"
    stop_timeout_seconds: float = 10.0
    #: an exclusive group (e.g. one GPU): at most the group's max_running members run at once
    group: str | None = None
    #: started with gatewayd and never put to sleep (e.g. an embedding server); outside any group
    always_on: bool = False
    #: for a backend that is not managed but sleeps on its own: how to wake it
    wake: Wake | None = None

    @property
    def managed(self) -> bool:
        return self.command is not None

    @property
    def wakeable(self) -> bool:
        """Started or woken on demand by gatewayd (managed, or with a wake action)."""
        return self.command is not None or self.wake is not None


@dataclass(frozen=True, slots=True)
class RouteTarget:
    backend: str
    #: the model name the backend knows; defaults to the route's public model name
    model: str | None = None


@dataclass(frozen=True, slots=True)
class Route:
    """A public model name and the ordered backends that serve it (first healthy one with room wins;
    later ones are fallbacks)."""

    model: str
    targets: tuple[RouteTarget, ...]


@dataclass(frozen=True, slots=True)
class Group:
    """An exclusive group of managed backends (one GPU's memory): at most ``max_running`` run at once."""

    name: str
    max_running: int = 1
    #: while another model is served, a waiting request is served within about this long (a swap is
    #: forced then); below it, the model already loaded keeps being served (fewer swaps)
    max_wait_seconds: float = 60.0


@dataclass(frozen=True, slots=True)
class ManagedSettings:
    """Managed backends (model servers gatewayd starts on demand and stops when idle)."""

    #: a backend's log (in the state directory) is rotated past this size, keeping this many old ones
    log_max_bytes: int = 10 * MIB
    log_backups: int = 3
    #: after a failed start, requests get the same 503 for this long before one tries again
    failed_start_backoff_seconds: float = 5.0
    #: a backend that crashed while requests wanted it is restarted after this long, doubling per crash
    #: in a row up to restart_backoff_max_seconds
    restart_backoff_seconds: float = 1.0
    restart_backoff_max_seconds: float = 60.0
    #: streaming clients waiting for a backend to start get an SSE comment / empty NDJSON message this
    #: often, so their read timeouts do not fire (the response is committed to 200 from then on)
    stream_progress: bool = False
    progress_interval_seconds: float = 5.0


@dataclass(frozen=True, slots=True)
class AffinitySettings:
    """Sticky routing: a conversation keeps landing on the replica that holds its KV cache."""

    enabled: bool = False
    #: request headers that name a session (first present wins), e.g. the ones coding agents send
    session_headers: tuple[str, ...] = (
        "x-gatewayd-session",
        "x-session-id",
        "x-session-affinity",
        "x-claude-code-session-id",
        "session-id",
        "session_id",
        "x-opencode-session",
    )
    #: without a session header: the key is a hash of the model and this many leading messages
    leading_messages: int = 2
    #: pins kept, least recently used dropped first, and how long an unused pin lives
    max_entries: int = 10000
    ttl_seconds: float = 3600.0


@dataclass(frozen=True, slots=True)
class AuthSettings:
    """Who may call. With ``mode: keys`` gatewayd may listen on a public address."""

    mode: AuthMode = AuthMode.OFF
    #: guards the admin API (/admin/*, key management, the status page's actions); literal or "env:NAME".
    #: With auth off and no token, the admin API is open to loopback clients only.
    admin_token: str | None = field(default=None, repr=False)
    #: POST /keys/refresh (public) re-reads the key store at most once per this long; concurrent calls
    #: share one re-read, and each call returns once a re-read that began after it is done
    key_refresh_min_interval_seconds: float = 0.5


@dataclass(frozen=True, slots=True)
class ApiKey:
    """A key declared in the config file; imported into the key store at start (only its hash is kept)."""

    name: str
    #: the key itself, literal or "env:NAME" (never logged)
    key: str = field(repr=False)
    #: models it may use; None = all
    models: tuple[str, ...] | None = None
    #: requests per minute, tokens per minute, requests at once, tokens in all; None = no limit
    rpm: int | None = None
    tpm: int | None = None
    max_concurrency: int | None = None
    budget_tokens: int | None = None
    #: ISO date or date-time (UTC) after which it is refused
    expires: str | None = None


@dataclass(frozen=True, slots=True)
class UsageSettings:
    """The usage record: every request, written in batches off the request path (SQLite, state dir)."""

    #: records older than this are deleted
    retention_days: float = 90.0
    #: buffered records are written this often, or as soon as this many wait
    flush_interval_seconds: float = 1.0
    batch_size: int = 500
    #: records kept in memory while the store is locked or unavailable; beyond it the oldest are dropped
    #: (and counted in a metric)
    max_buffer: int = 100_000


@dataclass(frozen=True, slots=True)
class StoreSettings:
    """Where keys, usage, responses and jobs are kept: the SQLite file in the state directory, or a
    PostgreSQL database shared by several instances."""

    #: postgresql://user@host:port/db (or postgresql:///db?service=NAME for a libpq service file); None =
    #: the SQLite file in the state directory. Shown everywhere without its credentials
    url: str | None = field(default=None, repr=False)
    #: the database password, literal or "env:NAME" (never logged); or give none and use a service file
    password: str | None = field(default=None, repr=False)
    #: with the store unreachable, keys already known keep working this long after it was last read
    key_cache_seconds: float = 300.0
    #: a store call waits at most this long for a database connection (then fails, off the request path)
    connect_timeout_seconds: float = 5.0
    #: database connections each part of a process (keys, usage, responses, jobs) keeps at most
    pool_size: int = 4


@dataclass(frozen=True, slots=True)
class ResponsesSettings:
    """Conversations of ``/v1/responses`` kept for ``previous_response_id`` (requests with ``store`` not
    false; SQLite in the state directory)."""

    #: a stored response older than this can no longer be continued, and is deleted
    retention_seconds: float = 86_400.0
    #: responses kept at most (the oldest are deleted first)
    max_stored: int = 10_000


@dataclass(frozen=True, slots=True)
class JobSettings:
    """Durable async jobs (POST /v1/jobs): kept in the store, run through the inference path."""

    #: jobs run at once by this process (each takes a backend slot like a live request)
    concurrency: int = 8
    #: a claimed job is this process's for this long, renewed while it runs; after a crash it runs again
    #: once the lease is out (at once at the next start on the same host)
    lease_seconds: float = 30.0
    #: tries of a job whose backend failed (connection error, 5xx) before it fails; a 4xx fails at once
    max_attempts: int = 5
    #: the first retry waits this long, each next one twice as long, up to retry_max_seconds
    retry_base_seconds: float = 1.0
    retry_max_seconds: float = 300.0
    #: how often the store is looked at for jobs submitted elsewhere (the CLI, another process)
    poll_interval_seconds: float = 1.0
    #: finished jobs (and their results) are deleted this long after they finish
    retention_seconds: float = 7 * 86_400.0
    #: webhook deliveries of one terminal state, retried with backoff from 1 s
    webhook_max_attempts: int = 8
    webhook_timeout_seconds: float = 10.0
    #: allow webhook URLs on loopback or private addresses (off: no requests into this machine's network)
    allow_private_webhooks: bool = False


@dataclass(frozen=True, slots=True)
class FleetSettings:
    """Several instances on one store (see the README's Fleet section): each writes a heartbeat row, and
    /status lists the instances seen lately."""

    #: how often this instance writes its heartbeat (name, version, load) to the store
    heartbeat_interval_seconds: float = 5.0
    #: /status lists the instances whose last heartbeat is at most this old
    seen_window_seconds: float = 30.0


@dataclass(frozen=True, slots=True)
class Config:
    """The whole config. ``source`` is the file it came from (None for the built-in default)."""

    server: ServerSettings = ServerSettings()
    shutdown: ShutdownSettings = ShutdownSettings()
    restart: RestartSettings = RestartSettings()
    timeouts: Timeouts = Timeouts()
    limits: Limits = Limits()
    health: HealthSettings = HealthSettings()
    discovery: DiscoverySettings = DiscoverySettings()
    logging: LoggingSettings = LoggingSettings()
    managed: ManagedSettings = ManagedSettings()
    affinity: AffinitySettings = AffinitySettings()
    auth: AuthSettings = AuthSettings()
    usage: UsageSettings = UsageSettings()
    store: StoreSettings = StoreSettings()
    responses: ResponsesSettings = ResponsesSettings()
    jobs: JobSettings = JobSettings()
    fleet: FleetSettings = FleetSettings()
    keys: tuple[ApiKey, ...] = ()
    backends: tuple[Backend, ...] = ()
    groups: tuple[Group, ...] = ()
    routes: tuple[Route, ...] = ()
    source: str | None = None

    @property
    def discovery_enabled(self) -> bool:
        if self.discovery.enabled is None:
            return not self.backends
        return self.discovery.enabled
