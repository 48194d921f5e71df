"""The Quart app of one generation: every route except the inference endpoints (see ``inference``).

Listings (/v1/models, /api/tags, /api/ps, /api/version), health (/healthz, /readyz), /metrics, /status,
/status/activity, the status page (/ and /ui, see ``gatewayd.gateway.ui``) and the admin surface
(/admin/backends, /admin/reload).
Routes are thin: they read the generation's state and render it; errors come back in the dialect of the
path (``{"error": ...}`` under /api, OpenAI error objects everywhere else). Every response carries
``X-Request-Id`` (the client's own, or a fresh one)."""

from __future__ import annotations

import json
import logging
import os
import signal
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from quart import Blueprint, Quart, Response, g, jsonify, request
from werkzeug.exceptions import HTTPException

from gatewayd import __version__
from gatewayd.config import AuthMode
from gatewayd.errors import AdminRequired, BadRequest, HttpError, ModelNotFound, NotFound, RequestError
from gatewayd.gateway.core.health import BackendState
from gatewayd.gateway.core.metadata import ollama_show as ollama_show_body
from gatewayd.gateway.core.metadata import ollama_tag, openai_fields
from gatewayd.gateway.core.requestbody import parse_json
from gatewayd.gateway.core.requestid import request_id
from gatewayd.gateway.dialects.anthropic import ANTHROPIC
from gatewayd.gateway.guard import Guard
from gatewayd.gateway.inference import dialect_of_path
from gatewayd.gateway.ui import status_page

if TYPE_CHECKING:
    from gatewayd.gateway.generation import GatewayGeneration

#: the Ollama version reported by /api/version; clients compare it against the features they need
OLLAMA_COMPATIBLE_VERSION = "0.9.0"

log = logging.getLogger("gatewayd.app")


#: answered to anyone: liveness and readiness probes, the status page's shell (its data needs a key),
#: Ollama's version handshake, and the key-refresh nudge (it only makes gatewayd re-read its own store)
PUBLIC_PATHS = frozenset({"/healthz", "/readyz", "/", "/ui", "/api/version", "/keys/refresh"})
#: with keys required, these need the admin token: they show every key's use and the backends' errors
OPERATOR_PATHS = frozenset({"/metrics", "/status", "/status/activity"})


def create_app(
    generation: GatewayGeneration,
    instance_snapshot: Callable[[], Mapping[str, object]],
    guard: Guard,
    blueprints: Sequence[Blueprint] = (),
    *,
    fleet: Callable[[], list[dict[str, Any]]] = list,
) -> Quart:
    app = Quart("gatewayd")
    for blueprint in blueprints:  # the areas served beside these routes (jobs)
        app.register_blueprint(blueprint)
    app.config.update(
        MAX_CONTENT_LENGTH=generation.config.server.max_body_bytes,
        RESPONSE_TIMEOUT=None,
        BODY_TIMEOUT=None,
        JSON_SORT_KEYS=False,
        PROVIDE_AUTOMATIC_OPTIONS=True,
    )
    started = int(time.time())

    @app.before_request
    async def check_access() -> Response | None:
        """/admin/* needs the admin token. With keys required, everything else but PUBLIC_PATHS needs a
        valid key or the admin token. (The Host and browser-origin checks, which keep /admin/* same-origin
        only, ran before: ``gatewayd.gateway.access``.)"""
        path = request.path
        if path in PUBLIC_PATHS:
            return None
        headers = _scope_headers()
        try:
            if path.startswith("/admin/"):
                guard.require_admin(headers)
            elif guard.is_admin(headers):
                pass
            elif path in OPERATOR_PATHS and guard.settings.mode is AuthMode.KEYS:
                raise AdminRequired(f"{path} shows every key's use: it needs the admin token")
            elif "anthropic-version" in request.headers:  # an Anthropic client: its key may be in x-api-key
                guard.authenticate(headers, ANTHROPIC.api_key)
            else:
                guard.authenticate(headers)
        except RequestError as error:
            return _error_response(error)
        return None

    @app.after_request
    async def add_request_id(response: Response) -> Response:
        response.headers["X-Request-Id"] = _request_id()
        return response

    @app.get("/healthz")
    async def healthz() -> Response:
        return jsonify({"status": "ok"})

    @app.get("/readyz")
    async def readyz() -> tuple[Response, int]:
        if generation.draining:
            return jsonify({"status": "draining"}), 503
        return jsonify({"status": "ready", "generation": generation.number}), 200

    @app.get("/metrics")
    async def metrics() -> Response:
        body, content_type = generation.metrics.exposition(request.headers.get("Accept"))
        return Response(body, content_type=content_type)

    @app.get("/status")
    async def status() -> Response:
        return jsonify(
            {
                "instance": {**instance_snapshot(), "name": generation.instance_name},
                "generation": generation.number,
                "draining": generation.draining,
                **generation.status(),
                "backends": generation.backend_rows(),
                "models": generation.model_rows(),
                "fleet": fleet(),
            }
        )

    @app.get("/status/activity")
    async def status_activity() -> Response:
        """Requests per second and latency p50/p95 per second for the last minutes, and the last requests
        (time, API, model, backend, status, timings: never a key, header or body). Process-wide: a reload
        keeps it."""
        return jsonify(generation.activity.snapshot())

    @app.get("/")
    @app.get("/ui")
    async def ui() -> Response:
        """The live status page: one HTML document that loads nothing from elsewhere (see
        ``gatewayd.gateway.ui``); it polls /status, /admin/backends and /status/activity."""
        page = status_page()
        response = Response(page.html, content_type="text/html; charset=utf-8")
        response.headers["Content-Security-Policy"] = page.content_security_policy
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"
        response.headers["Cache-Control"] = "no-cache"
        return response

    @app.get("/admin/backends")
    async def admin_backends() -> Response:
        """Every backend with its server's state, pid, port, uptime and load.

        The /admin routes change what runs on this machine: they need the admin token (auth.admin_token);
        with no token set they are open only while auth is off (gatewayd then listens on loopback only),
        and only to same-origin requests (see ``check_access``)."""
        return jsonify(generation.admin_backend_rows())

    @app.post("/admin/backends/<backend_id>/start")
    async def admin_start_backend(backend_id: str) -> Response:
        """Start (or wake) a backend gatewayd runs and answer its row once it is ready: 404 for an unknown
        id, 409 when gatewayd does not run it ("not_managed") or its group has no free slot
        ("group_full"), 503 with the start's error. Guarded like ``admin_backends``."""
        try:
            return jsonify(await generation.start_backend(backend_id))
        except RequestError as error:
            return _error_response(error)

    @app.post("/admin/backends/<backend_id>/stop")
    async def admin_stop_backend(backend_id: str) -> Response:
        """Stop a backend's server once its requests are done and answer its row: 404 for an unknown id,
        409 ("not_managed") when gatewayd does not run it. Guarded like ``admin_backends``."""
        try:
            return jsonify(await generation.stop_backend(backend_id))
        except RequestError as error:
            return _error_response(error)

    @app.get("/admin/keys")
    async def admin_keys() -> Response:
        """Every key (never the key itself: its first characters identify it)."""
        return jsonify([record.public() for record in await guard.list_keys()])

    @app.post("/admin/keys")
    async def admin_create_key() -> tuple[Response, int] | Response:
        """Create a key from a JSON body (name, and optionally models, rpm, tpm, max_concurrency,
        budget_tokens, expires); the answer holds the key, this once."""
        record, secret = await guard.create_key(await _json_body())
        return jsonify({**record.public(), "key": secret}), 201

    @app.delete("/admin/keys/<ref>")
    async def admin_revoke_key(ref: str) -> Response:
        """Revoke a key (by id, prefix or name): refused from this moment on."""
        try:
            return jsonify((await guard.revoke_key(ref)).public())
        except RequestError as error:
            return _error_response(error)

    @app.post("/keys/refresh")
    async def refresh_keys() -> Response:
        """Re-read the keys from the store now: ``gatewayd keys create|revoke`` call it after changing the
        store, so a revoked key is refused at once (otherwise within KEY_REFRESH_INTERVAL_SECONDS). Public:
        it reveals nothing and changes nothing but the freshness of the cache."""
        await guard.refresh_keys()
        return jsonify({"refreshed": True})

    @app.post("/admin/reload")
    async def admin_reload() -> tuple[Response, int] | Response:
        """Ask for a reload of the config, as ``gatewayd reload`` does, and answer 202 at once: the outcome
        shows in /status later (``instance.last_reload``, a new ``generation``). The gateway does not know
        the run loop, so it asks the way an operator does: SIGHUP to its own process, which the run loop
        takes as a reload (coalesced with any other reload request). 503 when nothing in this process
        handles SIGHUP (a gateway embedded without the run loop), where the signal would end the process.
        Guarded like ``admin_backends``."""
        if signal.getsignal(signal.SIGHUP) in (signal.SIG_DFL, signal.SIG_IGN, None):
            unavailable = "reload is not available: this process does not run gatewayd's run loop"
            return _error_response(HttpError(unavailable, status=503))
        os.kill(os.getpid(), signal.SIGHUP)
        return jsonify({"reload": "requested", "generation": generation.number}), 202

    @app.get("/v1/models")
    async def openai_models() -> Response:
        if "anthropic-version" in request.headers:
            return jsonify(_anthropic_models(generation.model_rows(), started))
        return jsonify({"object": "list", "data": [_openai_model(row) for row in generation.model_rows()]})

    @app.get("/v1/models/<path:model_id>")
    async def openai_model(model_id: str) -> Response:
        """One model (openai's ``models.retrieve``); ids may hold '/' and ':'. 404 in OpenAI's shape."""
        for row in generation.model_rows():
            if row["name"] == model_id:
                return jsonify(_openai_model(row))
        return _error_response(ModelNotFound(f"model '{model_id}' is not served by gatewayd", param="model"))

    def _openai_model(row: Mapping[str, Any]) -> dict[str, Any]:
        return {
            "id": row["name"],
            "object": "model",
            "created": started,
            "owned_by": "gatewayd",
            **openai_fields(generation.pool.inventory.describe(row["name"])),
            "backends": row["backends"],
            "state": row["state"],
        }

    @app.get("/api/tags")
    async def ollama_tags() -> Response:
        inventory = generation.pool.inventory
        return jsonify(
            {
                "models": [
                    ollama_tag(row["name"], inventory.describe(row["name"]))
                    for row in generation.model_rows()
                ]
            }
        )

    @app.get("/api/ps")
    async def ollama_ps() -> Response:
        inventory = generation.pool.inventory
        models = []
        for row in generation.model_rows():
            if row["state"] != "running":
                continue
            info = inventory.describe(row["name"])
            entry = ollama_tag(row["name"], info)
            entry.pop("modified_at", None)
            entry.pop("capabilities", None)
            expires = generation.expires_at(row)
            if expires is not None:
                entry["expires_at"] = expires
            if info is not None and info.context_length is not None:
                entry["context_length"] = info.context_length
            models.append(entry)
        return jsonify({"models": models})

    @app.post("/api/show")
    async def ollama_show() -> Response:
        """What Ollama's clients ask before they use a model (``ollama run`` first of all): what its
        backend said about it (capabilities, context length, template...), for any model gatewayd routes;
        what the backend did not say is left out. 404 in Ollama's shape for another name."""
        row = _requested_model(await _json_body())
        backends = ", ".join(b["backend"] for b in row["backends"])
        shown = ollama_show_body(generation.pool.inventory.describe(row["name"]))
        return jsonify({"modelfile": f"# served by gatewayd from {backends}", **shown})

    @app.post("/api/pull")
    async def ollama_pull() -> Response:
        """gatewayd does not download models: a model it routes is already "pulled" (success, as Ollama
        answers for a model it has); any other name is a 404 saying how to serve it."""
        body = await _json_body()
        _requested_model(body)
        success = {"status": "success"}
        if body.get("stream") is False:
            return jsonify(success)
        return Response(json.dumps(success) + "\n", content_type="application/x-ndjson")

    async def _json_body() -> Any:
        """The request's JSON body, whatever its Content-Type (curl sends a JSON body as a form by default,
        and the inference endpoints accept that too). Raises BadRequest for malformed input."""
        raw = await request.get_data(as_text=False)
        assert isinstance(raw, bytes)
        return parse_json(raw, generation.config.server.max_json_depth)

    def _requested_model(body: Any) -> dict[str, Any]:
        """The model row a /api/show or /api/pull body names. Raises BadRequest or ModelNotFound."""
        name = (body.get("model") or body.get("name")) if isinstance(body, dict) else None
        if not isinstance(name, str) or not name:
            raise BadRequest("'model' is required and must be a non-empty string", param="model")
        rows = {row["name"]: row for row in generation.model_rows()}
        for alias in (name, name.removesuffix(":latest"), f"{name}:latest"):
            if alias in rows:
                return rows[alias]
        raise ModelNotFound(
            f"model '{name}' is not served by gatewayd; gatewayd does not pull models: declare a backend "
            "or a route that serves it"
        )

    @app.get("/api/version")
    async def ollama_version() -> Response:
        return jsonify({"version": OLLAMA_COMPATIBLE_VERSION, "gatewayd": __version__})

    @app.errorhandler(RequestError)
    async def request_error(error: RequestError) -> Response:
        return _error_response(error)

    @app.errorhandler(Exception)
    async def unexpected_error(error: Exception) -> Response:
        """Any other exception in a route or hook: a 500 in the path's dialect that gives the request id
        (to find the traceback, logged here once), never Quart's bare 500."""
        rid = _request_id()
        log.error(
            "unexpected error answering %s %s (request id %s)",
            request.method,
            request.path,
            rid,
            exc_info=error,
        )
        message = f"internal error in gatewayd (request id {rid}); its log has the details"
        return _error_response(RequestError(message))  # the base class: 500, server_error

    @app.errorhandler(HTTPException)
    async def http_error(error: HTTPException) -> Response:
        code = error.code or 500
        if code == 404:
            return _error_response(NotFound(f"no such endpoint: {request.method} {request.path}"))
        return _error_response(HttpError(error.description or error.name, status=code))

    return app


def _request_id() -> str:
    """This request's id: the client's X-Request-Id if usable, else a fresh one, the same for every use."""
    if "request_id" not in g:
        g.request_id = request_id(request.headers.get("X-Request-Id"))
    return str(g.request_id)


def _scope_headers() -> list[tuple[bytes, bytes]]:
    return [
        (name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in request.headers.items()
    ]


def _error_response(error: RequestError) -> Response:
    dialect = dialect_of_path(request.path)
    response = Response(dialect.error_body(error), content_type="application/json")
    response.status_code = dialect.error_status(error)
    return response


def _anthropic_models(rows: list[dict[str, Any]], created: int) -> dict[str, Any]:
    """Anthropic's model list (the ``anthropic`` client's ``models.list()``), for requests that carry
    ``anthropic-version``; one page holds every model."""
    created_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(created))
    data = [
        {"type": "model", "id": row["name"], "display_name": row["name"], "created_at": created_at}
        for row in rows
    ]
    return {
        "data": data,
        "has_more": False,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
    }


def model_state(states: list[BackendState]) -> str:
    """A model's state from its backends' states, the best of them: running when one is routable and has
    answered; starting; sleeping (started by the next request); unknown (not probed yet); failed when a
    backend that gatewayd starts failed to; else unavailable."""
    if any(s in (BackendState.UP, BackendState.DEGRADED) for s in states):
        return "running"
    for state, name in (
        (BackendState.STARTING, "starting"),
        (BackendState.SLEEPING, "sleeping"),
        (BackendState.UNKNOWN, "unknown"),
    ):
        if state in states:
            return name
    return "unavailable"
