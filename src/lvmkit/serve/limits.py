"""What is refused before a route runs: request bodies over the size limit, bodies that are not UTF-8, and a
non-loopback bind address without a token.

``BodyLimit`` is plain ASGI middleware: it reads the body (at most ``max_bytes``; a declared Content-Length over
the limit is refused before reading), answers 413 when it is longer and 400 when it is not UTF-8, and otherwise
hands the buffered body to the app unchanged.
"""

from __future__ import annotations

import ipaddress
import json

from lvmkit.errors import ConfigError

LOOPBACK_NAMES = ("localhost",)


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and localhost; 0.0.0.0 (every interface) is not loopback."""
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_exposure(host: str, token: str | None) -> None:
    """Refuse to listen beyond this machine without a token (ConfigError naming both fixes)."""
    if not is_loopback(host) and not token:
        raise ConfigError(
            f"--host {host} makes the server reachable from other machines; it then requires a token: pass "
            "--token TOKEN or set LVMKIT_TOKEN (clients send 'Authorization: Bearer TOKEN'), or bind 127.0.0.1"
        )


class BodyLimit:
    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, int(max_bytes)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS", "DELETE"):
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            return await self._refuse(send, 413, self._too_large())
        body, more = bytearray(), True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.max_bytes:
                return await self._refuse(send, 413, self._too_large())
        if b"json" in headers.get(b"content-type", b""):
            try:
                bytes(body).decode("utf-8")
            except UnicodeDecodeError as e:
                return await self._refuse(send, 400, f"the request body is not valid UTF-8 (byte {e.start})")
        sent = False

        async def replay():
            nonlocal sent
            if sent:
                return await receive()  # after the body: wait for the disconnect like the app would
            sent = True
            return {"type": "http.request", "body": bytes(body), "more_body": False}

        return await self.app(scope, replay, send)

    def _too_large(self) -> str:
        return (
            f"the request body is over this server's limit of {self.max_bytes:,} bytes (see /v1/info limits)"
        )

    @staticmethod
    async def _refuse(send, status: int, detail: str) -> None:
        payload = json.dumps({"detail": detail}).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": payload})
