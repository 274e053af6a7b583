"""The openpi-compatible websocket endpoint: what ``openpi_client.websocket_client_policy.WebsocketClientPolicy``
talks to, unchanged.

Protocol (openpi's ``websocket_policy_server``, plus gaflow's session and guidance fields):

* connect (optionally ``ws://host:port/?seed=<episode>``; with an API key, header ``Authorization: Api-Key <key>``)
  → one binary msgpack frame: the metadata (:meth:`GuidedPolicyService.metadata`), including an
  ``example_observation`` a client can send as is;
* then each binary frame is one observation (msgpack, arrays in the openpi format, :mod:`gaflow.serving.codec`),
  answered by ``{"actions": (H, action_dim), "guidance": {...}, "server_timing": {...}, "session": {...}}``;
* a request the server refuses (malformed frame, observation failing the schema, unknown config, ...) is answered
  by a **text** frame naming the problem — openpi's client raises it as ``RuntimeError`` — and the connection stays
  open for the next request (openpi's server closes it; a robot would rather retry than reconnect);
* a frame larger than ``max_message_bytes`` closes the connection with code 1009 (message too big) before it is
  buffered; ``GET /healthz`` answers 200 with a small JSON status, without a key.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
from http import HTTPStatus
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response
from websockets.protocol import State

from gaflow.serving.codec import CodecError, packb, unpackb
from gaflow.serving.service import GuidedPolicyService, RequestError, ServiceClosed, check_seed

log = logging.getLogger("gaflow.serve")
HEALTH_PATH = "/healthz"
GOING_AWAY = 1001  # RFC 6455: the server is shutting down
TRY_AGAIN_LATER = 1013


def session_seed(path: str) -> int | None:
    """The ``seed`` query parameter of a connection URL (``/?seed=7``), or None."""
    values = parse_qs(urlsplit(path).query).get("seed")
    if not values:
        return None
    return check_seed(values[-1], "the 'seed' query parameter")


class OpenpiEndpoint:
    """Connection handling for :func:`websockets.asyncio.server.serve` (``process_request`` + ``handle``)."""

    def __init__(self, service: GuidedPolicyService, *, api_key: str | None = None) -> None:
        self.service, self.api_key = service, api_key
        self.connections: set[ServerConnection] = set()
        self.draining = False
        self._inflight = 0
        self._idle: asyncio.Event | None = None
        self.started = time.time()

    # ------------------------------------------------------------------ HTTP stage
    def process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        if urlsplit(request.path).path == HEALTH_PATH:
            status = {"status": "draining" if self.draining else "ok", "policy": self.service.name,
                      "sessions": self.service.num_sessions, "uptime_s": round(time.time() - self.started, 1),
                      **self.service.stats}
            response = connection.respond(HTTPStatus.OK, json.dumps(status) + "\n")
            response.headers["Content-Type"] = "application/json"
            return response
        if self.api_key is not None:
            given = request.headers.get("Authorization", "")
            if not hmac.compare_digest(given.encode(), f"Api-Key {self.api_key}".encode()):
                log.warning("refused a connection from %s: missing or wrong API key", connection.remote_address)
                return connection.respond(HTTPStatus.UNAUTHORIZED,
                                          "missing or wrong API key: send the header 'Authorization: Api-Key <key>'\n")
        if self.draining:
            return connection.respond(HTTPStatus.SERVICE_UNAVAILABLE, "the server is shutting down\n")
        if self.service.num_sessions >= self.service.max_sessions:
            return connection.respond(HTTPStatus.SERVICE_UNAVAILABLE,
                                      f"the server already has {self.service.max_sessions} sessions; retry later\n")
        try:
            session_seed(request.path)
        except RequestError as e:
            return connection.respond(HTTPStatus.BAD_REQUEST, f"{e}\n")
        return None

    # ------------------------------------------------------------------ WebSocket stage
    async def handle(self, ws: ServerConnection) -> None:
        try:
            session = self.service.open_session(session_seed(ws.request.path))
        except RequestError as e:
            await ws.close(TRY_AGAIN_LATER, str(e)[:120])
            return
        self.connections.add(ws)
        log.info("session %d opened by %s (episode %d)", session.id, ws.remote_address, session.episode)
        try:
            await ws.send(packb(self.service.metadata(session)))
            prev_total_ms = None
            while True:
                message = await ws.recv()
                if ws.state is not State.OPEN:  # the client left; its buffered requests have no one to answer
                    break
                if self.draining:
                    await ws.close(GOING_AWAY, "server shutting down")
                    break
                start = time.perf_counter()
                self._inflight += 1  # until the reply is sent: drain() waits for it
                try:
                    reply = await self._answer(session, message)
                    if isinstance(reply, dict):
                        reply["server_timing"]["prev_total_ms"] = prev_total_ms
                        await ws.send(packb(reply))
                    else:
                        await ws.send(reply)
                finally:
                    self._inflight -= 1
                    if self._inflight == 0 and self._idle is not None:
                        self._idle.set()
                prev_total_ms = (time.perf_counter() - start) * 1e3
        except ConnectionClosed:
            pass
        finally:
            self.connections.discard(ws)
            self.service.close_session(session)
            log.info("session %d closed", session.id)

    async def _answer(self, session, message) -> dict | str:
        try:
            if isinstance(message, str):
                raise RequestError("expected a binary msgpack frame (openpi format), got a text frame")
            future = self.service.submit(session, unpackb(message))
            return await asyncio.wrap_future(future)
        except (CodecError, RequestError) as e:
            log.info("session %d: bad request: %s", session.id, e)
            return f"gaflow serve: bad request: {e}"
        except ServiceClosed:
            return "gaflow serve: the server is shutting down"
        except Exception as e:  # inference failed on this input; the worker and the connection live on
            log.exception("session %d: inference failed", session.id)
            return f"gaflow serve: inference failed: {type(e).__name__}: {e}"

    async def drain(self, grace_s: float) -> None:
        """Refuse new requests, let the ones being computed finish (up to ``grace_s``), then close every
        connection with 1001 (going away)."""
        self.draining = True
        if self._inflight:
            self._idle = asyncio.Event()
            try:
                await asyncio.wait_for(self._idle.wait(), grace_s)
            except TimeoutError:
                log.warning("%d request(s) still running after %.1f s; closing anyway", self._inflight, grace_s)
        await asyncio.gather(*(ws.close(GOING_AWAY, "server shutting down") for ws in list(self.connections)),
                             return_exceptions=True)
