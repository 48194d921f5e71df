"""OpenAI's file and batch routes (/v1/files, /v1/batches) on top of jobs, for the official clients' batch
API. Files and batches belong to their key, like jobs; another key gets 404."""

from __future__ import annotations

from typing import Any

from quart import Blueprint, Response, jsonify, request

from gatewayd.errors import BadRequest, NotFound, RequestError
from gatewayd.gateway.core.requestbody import parse_json
from gatewayd.gateway.dialects.registry import ROUTES
from gatewayd.gateway.guard import Guard
from gatewayd.gateway.jobs.batches import parse_lines
from gatewayd.gateway.jobs.routes import error_response, in_store, request_owner
from gatewayd.gateway.jobs.store import ANY_KEY
from gatewayd.gateway.jobs.worker import JobRunner

#: batches listed by GET /v1/batches at most
MAX_BATCH_PAGE = 100


def batches_blueprint(runner: JobRunner, guard: Guard, *, max_json_depth: int) -> Blueprint:
    batches = Blueprint("batches", __name__)

    def visible(owner: str | None) -> bool:
        who = request_owner(guard)
        return who is ANY_KEY or owner == who

    @batches.errorhandler(RequestError)
    async def request_error(error: RequestError) -> Response:
        return error_response(error)

    @batches.post("/v1/files")
    async def upload() -> Response:
        """A multipart upload (``file`` under any filename, ``purpose``), kept whole in the store."""
        who = request_owner(guard)
        files = await request.files
        form = await request.form
        upload = files.get("file")
        if upload is None:
            raise BadRequest("send the file as the multipart field 'file'", param="file")
        content = upload.read()
        purpose = form.get("purpose") or "batch"
        owner = who if isinstance(who, str) else None
        stored = await in_store(
            lambda: runner.batches.put_file(owner, upload.filename or "upload", purpose, content)
        )
        return jsonify(stored)

    @batches.get("/v1/files/<file_id>")
    async def file_info(file_id: str) -> Response:
        return jsonify((await _file(file_id))[0])

    @batches.get("/v1/files/<file_id>/content")
    async def file_content(file_id: str) -> Response:
        _, content = await _file(file_id)
        return Response(content, content_type="application/jsonl")

    async def _file(file_id: str) -> tuple[dict[str, Any], bytes]:
        found = await in_store(lambda: runner.batches.get_file(file_id))
        if found is None or not visible(found[0]):
            raise NotFound(f"no file {file_id!r}")
        return found[1], found[2]

    @batches.post("/v1/batches")
    async def create() -> Response:
        who = request_owner(guard)
        raw = await request.get_data(as_text=False)
        assert isinstance(raw, bytes)
        body = parse_json(raw, max_json_depth)
        if not isinstance(body, dict):
            raise BadRequest("send a JSON object with input_file_id, endpoint and completion_window")
        endpoint = body.get("endpoint")
        if endpoint not in ROUTES:
            raise BadRequest(
                f"unknown endpoint {endpoint!r}: one of {', '.join(sorted(ROUTES))}", param="endpoint"
            )
        input_file_id = body.get("input_file_id")
        _, content = await _file(str(input_file_id))
        lines = parse_lines(content, str(endpoint))
        owner = who if isinstance(who, str) else None
        window = str(body.get("completion_window") or "24h")
        metadata = body.get("metadata")
        batch = await in_store(
            lambda: runner.batches.create_batch(
                owner, str(endpoint), str(input_file_id), window, metadata, lines
            )
        )
        runner.wake()
        return jsonify(batch)

    @batches.get("/v1/batches/<batch_id>")
    async def show(batch_id: str) -> Response:
        return jsonify(await _batch(batch_id))

    @batches.post("/v1/batches/<batch_id>/cancel")
    async def cancel(batch_id: str) -> Response:
        await _batch(batch_id)
        await in_store(lambda: runner.batches.cancel_batch(batch_id))
        runner.changed()
        return jsonify(await _batch(batch_id))

    @batches.get("/v1/batches")
    async def listing() -> Response:
        who = request_owner(guard)
        try:
            limit = max(1, min(int(request.args.get("limit", 20)), MAX_BATCH_PAGE))
        except ValueError:
            raise BadRequest("'limit' must be a whole number", param="limit") from None
        found = await in_store(lambda: runner.batches.list_batches(who, limit))
        data = [batch for _, batch in found]
        return jsonify({"object": "list", "data": data, "first_id": data[0]["id"] if data else None,
                        "last_id": data[-1]["id"] if data else None, "has_more": False})  # fmt: skip

    async def _batch(batch_id: str) -> dict[str, Any]:
        found = await in_store(lambda: runner.batches.get_batch(batch_id))
        if found is None or not visible(found[0]):
            raise NotFound(f"no batch {batch_id!r}")
        return dict(found[1])

    return batches
