"""What stands between the network and `kiln serve`'s routes: plain ASGI middleware that answers
before FastAPI reads anything, each refusal a JSON `{"detail": ...}` with a 4xx or 503 status.

Outermost first: `LastResort` (MemoryError and RecursionError become 503/400, never a 500 page),
`HostCheck` (without a token: DNS rebinding), CORS (only for `--allow-origin`), `BearerToken`,
`BodyLimit` (size and read deadline: a body sent one byte a second is cut off).
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import logging
import socket
import time
from collections.abc import Iterable

from fastapi.responses import JSONResponse

log = logging.getLogger("kiln.serve")


def problem(status: int, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status, headers=headers)


OUT_OF_MEMORY = (
    "the server ran out of memory for this request; send fewer or smaller images, or try again "
    "in a moment"
)


def answer_for(exc: BaseException) -> JSONResponse:
    """The JSON answer to an error no route caught: never a bare 500 for what a client caused."""
    if isinstance(exc, MemoryError):
        return problem(503, OUT_OF_MEMORY, {"Retry-After": "5"})
    if isinstance(exc, RecursionError):
        return problem(400, "the request is nested too deeply to read; send flat JSON")
    return problem(500, "internal error in the server (it is logged); please report it")


class LastResort:
    """Any exception that escapes the app becomes a JSON answer (when nothing was sent yet)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = False

        async def tracked(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        except Exception as exc:
            if not isinstance(exc, (MemoryError, RecursionError)):
                log.exception("error answering %s %s", scope.get("method"), scope.get("path"))
            if not started:
                await answer_for(exc)(scope, receive, send)


def allowed_hosts(bound: str) -> set[str]:
    """Host names a request may address when the server has no token: the address it is bound
    to, localhost and this machine's name (any IP address is allowed as well, see HostCheck)."""
    return {bound.strip("[]").lower(), "localhost", socket.gethostname().lower()}


class HostCheck:
    """Without a token, a request must address this server by an IP address, localhost or the
    name it was bound to: a web page elsewhere cannot reach it through a DNS name it controls
    (DNS rebinding), as Jupyter does it."""

    def __init__(self, app, hosts: Iterable[str]):
        self.app, self.hosts = app, {h.lower() for h in hosts}

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            raw = dict(scope["headers"]).get(b"host", b"").decode("latin-1").strip()
            name = _hostname(raw)
            if raw and not (name in self.hosts or _is_ip(name)):
                detail = (
                    f"Host '{raw[:100]}' is not this server's address: without --token, kiln serve "
                    "answers only requests addressed to an IP address, localhost or the name it "
                    "listens on (protection against DNS rebinding); start it with --token to "
                    "serve under other names"
                )
                return await problem(403, detail)(scope, receive, send)
        await self.app(scope, receive, send)


def _hostname(host: str) -> str:
    if host.startswith("["):  # [::1]:8000
        return host[1 : host.find("]")].lower() if "]" in host else host.lower()
    return host.rsplit(":", 1)[0].lower() if host.count(":") == 1 else host.lower()


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


class BearerToken:
    """Every route but /health needs `Authorization: Bearer TOKEN` (the scheme in any case, as
    RFC 7235 says), compared in constant time.

    The page itself (GET /, static HTML without any model data) is the one exception: a browser
    cannot send the header when it opens a URL, so the page reads the token from its address
    (/#token=TOKEN, a fragment the browser never sends) and puts it on its own API calls."""

    OPEN = {("GET", "/health"), ("HEAD", "/health"), ("GET", "/"), ("HEAD", "/")}

    def __init__(self, app, token: str):
        self.app, self.expected = app, token.encode()

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and (scope["method"], scope["path"]) not in self.OPEN:
            given = dict(scope["headers"]).get(b"authorization", b"")
            scheme, _, token = given.strip().partition(b" ")
            good = scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), self.expected)
            if not good:
                response = problem(
                    401,
                    "this server needs a token: send the header 'Authorization: Bearer TOKEN'",
                    {"WWW-Authenticate": "Bearer"},
                )
                return await response(scope, receive, send)
        await self.app(scope, receive, send)


class BodyLimit:
    """Reads the whole body before the app sees it: one byte over the limit is a 413, and a body
    that has not arrived in full after `timeout` seconds is a 408 (a client sending a byte a
    second holds no connection for long)."""

    def __init__(self, app, max_bytes: int, timeout: float = 30.0):
        self.app, self.max_bytes, self.timeout = app, max_bytes, timeout

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        too_big = problem(
            413, f"request body above the server's limit of {self.max_bytes:,} bytes "
            "(kiln serve --max-upload-mb); send fewer or smaller images",
        )  # fmt: skip
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None:
            if not declared.isdigit():
                return await problem(400, "invalid Content-Length header")(scope, receive, send)
            if int(declared) > self.max_bytes:
                return await too_big(scope, receive, send)
        chunks, size, more = [], 0, True
        deadline = time.monotonic() + self.timeout
        while more:
            try:
                message = await asyncio.wait_for(receive(), max(deadline - time.monotonic(), 0))
            except asyncio.TimeoutError:
                slow = problem(
                    408, f"the request body did not arrive within {self.timeout:g} s "
                    f"({size:,} bytes came); send it at once (kiln serve --body-timeout)",
                    {"Connection": "close"},
                )  # fmt: skip
                return await slow(scope, receive, send)
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                return await too_big(scope, receive, send)
            chunks.append(chunk)
            more = message.get("more_body", False)
        body, delivered = b"".join(chunks), False

        async def replay():
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)
