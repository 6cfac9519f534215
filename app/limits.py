"""Limits applied before any work: the body size on every route; and the one shape of every error answer.

The body limit is a pure ASGI middleware, outermost, so that a request over `max_body_bytes` is answered 413 before
routing, before the API key is checked and before a byte of it is parsed; a declared Content-Length over the limit is
refused without reading the body at all.
"""
from __future__ import annotations

import json

ERRORS_SHOWN = 20          # problems listed in an error body; the rest are counted in `errors_omitted`
JSON_TYPES = ("application/json",)


def error_body(detail: str, errors: list[dict] | None = None, total: int | None = None) -> dict:
    "The one shape of every error answer: a sentence, at most `ERRORS_SHOWN` problems, and how many more there were."
    errors = errors or []
    total = len(errors) if total is None else total
    return {"detail": detail, "errors": errors[:ERRORS_SHOWN], "errors_omitted": max(total - min(len(errors), ERRORS_SHOWN), 0)}


class BodyLimitMiddleware:
    "Reads each request body up to `limit` bytes before the app sees it; 413 beyond, whatever the route or key."

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.limit):
            await self._refuse(send, 413 if declared.isdigit() else 400)
            return
        body, more = bytearray(), True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect": return
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.limit:
                await self._refuse(send, 413)
                return
        sent = False

        async def replay():
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": bytes(body), "more_body": False}
            return await receive()           # after the body: wait for the client's disconnect, as the server would

        await self.app(scope, replay, send)

    async def _refuse(self, send, status: int) -> None:
        detail = (f"the request body is larger than {self.limit:,} bytes (max_body_bytes)" if status == 413
                  else "the Content-Length header is not a number")
        payload = json.dumps(error_body(detail)).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": payload})
