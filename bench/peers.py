"""Processes the throughput benchmark runs beside the service.

``python bench/peers.py bare PORT``: the limit, an aiohttp server that answers every request
with the constant answer, with the same server settings and event loop as the service.
``python bench/peers.py sink PORT``: a webhook receiver that counts deliveries (GET /count).
"""

from __future__ import annotations

import sys

from aiohttp import web

from policy_server.service.eventloop import new_event_loop

ANSWER = b'{"status":0,"msg":""}'


async def bare(request: web.Request) -> web.Response:
    await request.read()
    return web.Response(body=ANSWER, content_type="application/json")


def main() -> None:
    kind, port = sys.argv[1], int(sys.argv[2])
    app = web.Application()
    if kind == "bare":
        app.router.add_route("*", "/{tail:.*}", bare)
    else:
        received = {"count": 0}

        async def notify(request: web.Request) -> web.Response:
            await request.read()
            received["count"] += 1
            return web.Response(text="ok")

        async def count(request: web.Request) -> web.Response:
            return web.json_response(received)

        app.router.add_post("/notify", notify)
        app.router.add_get("/count", count)
    # the loop the service runs on, so the ratio compares handlers, not loops
    web.run_app(
        app, host="127.0.0.1", port=port, access_log=None, print=None, loop=new_event_loop()
    )


if __name__ == "__main__":
    main()
