"""The HTTP middlewares run for every HTTP request, unknown routes included, and for no WebSocket:
an open socket keeps nothing of them suspended (about 300 bytes each, times every idle socket)."""

import asyncio

from service.push.ws_handlers import serve_socket
from service.routes import SOCKET_ROUTES

from .helpers import drain_snapshot


def suspended_coroutines(task: asyncio.Task) -> list[tuple[str, str]]:
    """(module, qualified name) of each coroutine a task is suspended in, outermost first."""
    chain, coro = [], task.get_coro()
    while coro is not None and hasattr(coro, "cr_code"):
        chain.append((coro.cr_frame.f_globals["__name__"], coro.cr_code.co_qualname))
        coro = coro.cr_await
    return chain


async def test_every_socket_route_is_named_for_the_middlewares_to_skip(client):
    socket_routes = {route.name for route in client.app.router.routes()
                     if getattr(route.handler, "func", None) is serve_socket}
    assert socket_routes == SOCKET_ROUTES


async def test_an_open_socket_keeps_no_middleware_suspended(client, user):
    execution = await user.create_execution()
    async with user.ws(execution["id"]) as ws, client.ws_connect("/api/v1/ws", headers=user.headers) as multi:
        await drain_snapshot(ws)
        await multi.send_json({"type": "ping"})
        assert (await multi.receive_json(timeout=5))["type"] == "pong"
        chains = [chain for task in asyncio.all_tasks()
                  if ("service.push.ws_handlers", "serve_socket") in (chain := suspended_coroutines(task))]
        assert len(chains) == 2
        for chain in chains:
            # aiohttp's own coroutines, then the socket's handler: none of the service's above it.
            above = chain[:chain.index(("service.push.ws_handlers", "serve_socket"))]
            assert [name for module, name in above if not module.startswith("aiohttp.")] == [], chain


async def test_unknown_routes_and_methods_get_the_request_id_and_are_counted(client):
    for method, path, status in (("GET", "/api/v1/nothing-here", 404), ("DELETE", "/api/v1/executions", 405)):
        response = await client.request(method, path, headers={"X-Request-ID": f"edge-{status}"})
        assert (response.status, response.headers["X-Request-ID"]) == (status, f"edge-{status}")
        assert (await response.json())["error"]["code"] in ("not_found", "method_not_allowed")
    metrics = await (await client.get("/metrics")).text()
    assert 'status="404"' in metrics and 'status="405"' in metrics
