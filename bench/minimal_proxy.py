"""A trivial proxy, the reference point for the gateway's overhead: quart + hypercorn (uvloop) + an aiohttp
client, the combination measured in /work/shared/notes/performance.md as "+0.68 ms, 2,273 req/s at 16".

It forwards ``POST /v1/chat/completions`` and ``GET /v1/models`` to one upstream (streams are relayed chunk
by chunk as they arrive) and answers ``GET /readyz`` once serving. No routing, no retries, no logging.

``python bench/minimal_proxy.py --port P --upstream http://127.0.0.1:U``; run it through the benchmark with
``--gatewayd-cmd "{python} bench/minimal_proxy.py --port {port} --upstream {upstream}"``.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import AsyncIterator, Sequence

import aiohttp
from hypercorn.asyncio import serve
from hypercorn.config import Config
from quart import Quart, Response, request

#: passed through to the client
_FORWARDED_HEADERS = ("content-type", "cache-control")


def build_app(upstream: str) -> Quart:
    app = Quart(__name__)
    sessions: list[aiohttp.ClientSession] = []

    @app.before_serving
    async def open_session() -> None:
        connector = aiohttp.TCPConnector(limit=0)
        sessions.append(aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=None)))

    @app.after_serving
    async def close_session() -> None:
        for session in sessions:
            await session.close()

    @app.get("/readyz")
    async def readyz() -> Response:
        return Response("ok", content_type="text/plain")

    @app.get("/v1/models")
    async def models() -> Response:
        async with sessions[0].get(upstream + "/v1/models") as upstream_response:
            body = await upstream_response.read()
            return Response(body, status=upstream_response.status, content_type="application/json")

    @app.post("/v1/chat/completions")
    async def chat() -> Response:
        body = await request.get_data()
        upstream_response = await sessions[0].post(
            upstream + "/v1/chat/completions", data=body, headers={"Content-Type": "application/json"}
        )
        headers = {
            name: value
            for name, value in upstream_response.headers.items()
            if name.lower() in _FORWARDED_HEADERS
        }
        if upstream_response.headers.get("Content-Type", "").startswith("text/event-stream"):

            async def relay() -> AsyncIterator[bytes]:
                try:
                    async for chunk in upstream_response.content.iter_any():
                        yield chunk
                finally:
                    upstream_response.release()

            return Response(relay(), status=upstream_response.status, headers=headers)
        try:
            data = await upstream_response.read()
        finally:
            upstream_response.release()
        return Response(data, status=upstream_response.status, headers=headers)

    return app


async def _main(host: str, port: int, upstream: str) -> None:
    config = Config()
    config.bind = [f"{host}:{port}"]
    config.accesslog = None
    config.errorlog = "-"
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await serve(build_app(upstream.rstrip("/")), config, shutdown_trigger=stop.wait)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Trivial quart + hypercorn + aiohttp proxy (a reference).")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="base URL, e.g. http://127.0.0.1:9000")
    args = parser.parse_args(argv)
    try:
        import uvloop
    except ImportError:
        asyncio.run(_main(args.host, args.port, args.upstream))
    else:
        uvloop.run(_main(args.host, args.port, args.upstream))
    return 0


if __name__ == "__main__":
    sys.exit(main())
