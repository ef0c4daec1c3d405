"""Serving the application under gunicorn, configured from the settings (``back-spasm-cds serve``).

The protocol is loaded and compiled once in the master process before the workers fork (preload), and every
worker runs one made-up call of each service after it forks (``warm_up``) and opens its database connections and
runs its first purges (``prepare_storage``), so that it answers its first request at full speed; the workers share the compiled content's memory.

Two things gunicorn would otherwise do its own way are made to match the rest of the service:
- errors gunicorn answers itself, before the application sees the request (a request line or headers too long,
  a malformed request line or chunk), get the same JSON OperationOutcome body as every other error, not HTML;
- a request answered without its body being read whole (a 401 before the body, a 413, a 404) is answered with
  ``Connection: close``: gunicorn only drains a small unread body, and would otherwise drop the kept-alive
  connection after the answer, losing the client's next request on it; a chunked body is held to the same
  size limit as one with a Content-Length.
"""

from __future__ import annotations

import gc
import io
import os
import sys
import warnings
from collections.abc import Callable, Iterable
from typing import Any

import orjson
from gunicorn.app.base import BaseApplication
from gunicorn.http import errors as http_errors
from gunicorn.workers.gthread import ThreadWorker
from werkzeug.exceptions import BadRequest

from service import create_app, state_of
from service.cds_hooks.hooks import prepare_storage, warm_up
from service.config import Settings
from service.errors import outcome

#: Status of each error gunicorn's HTTP parser raises (anything else it raises is a 400: a malformed request).
PARSER_ERROR_STATUS: list[tuple[type[BaseException], int, str]] = [
    (http_errors.LimitRequestLine, 414, "the request line is too long"),
    (http_errors.LimitRequestHeaders, 431, "the request headers are too large or too many"),
    (http_errors.UnsupportedTransferCoding, 501, "the transfer coding is not supported"),
    (http_errors.ExpectationFailed, 417, "the Expect header cannot be met"),
    (http_errors.ForbiddenProxyRequest, 403, "the proxy is not allowed"),
    (http_errors.ParseException, 400, "the request is not valid HTTP/1.1"),
]
REASONS = {400: "Bad Request", 403: "Forbidden", 413: "Content Too Large", 414: "URI Too Long", 417: "Expectation Failed", 431: "Request Header Fields Too Large",
           500: "Internal Server Error", 501: "Not Implemented"}


def error_bytes(status: int, message: str) -> bytes:
    """A whole HTTP/1.1 error answer with a JSON OperationOutcome body, closing the connection."""
    body = orjson.dumps(outcome(status, message))
    head = (f"HTTP/1.1 {status} {REASONS.get(status, 'Error')}\r\nConnection: close\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n")
    return head.encode("ascii") + body


class JsonErrors:
    """For a gunicorn worker class: the errors gunicorn raises itself are answered with the service's JSON body."""

    log: Any

    def handle_error(self, req: Any, client: Any, addr: Any, exc: BaseException) -> None:
        status, message = next(((code, text) for kind, code, text in PARSER_ERROR_STATUS if isinstance(exc, kind)),
                               (500, "internal error: the request could not be processed"))
        if status == 500:
            self.log.error("error handling a request: %s", type(exc).__name__)
        else:
            self.log.info("refused a malformed request: %s", type(exc).__name__)
        try:
            client.sendall(error_bytes(status, message))
        except OSError:
            pass


class JsonErrorWorker(JsonErrors, ThreadWorker):
    """gunicorn's threaded worker (``worker_class: gthread``) with JSON error answers."""


def gevent_worker() -> type:
    """gunicorn's gevent worker (``worker_class: gevent``) with JSON error answers; imported only when used, as
    importing it loads gevent."""
    from gunicorn.workers.ggevent import GeventWorker

    return type("JsonErrorGeventWorker", (JsonErrors, GeventWorker), {"__doc__": "gunicorn's gevent worker with JSON error answers."})


class _CountingInput:
    """The request body stream, noting whether it was read to its end; a read that fails is the client's 400."""

    def __init__(self, stream: Any, length: int | None):
        self._stream = stream
        self._left = length
        self.finished = length == 0

    def _saw(self, data: bytes, asked: int | None) -> bytes:
        if self._left is not None:
            self._left -= len(data)
            self.finished = self.finished or self._left <= 0
        if not data and asked != 0:
            self.finished = True
        return data

    def read(self, size: int | None = None) -> bytes:
        try:
            return self._saw(self._stream.read() if size is None or size < 0 else self._stream.read(size), size)
        except Exception as exc:  # gunicorn's parser errors and a client gone mid-body, whatever their class
            raise BadRequest("the request body could not be read whole (malformed or cut short)") from exc

    def readline(self, size: int | None = None) -> bytes:
        return self._saw(self._stream.readline() if size is None else self._stream.readline(size), size)

    def __iter__(self) -> Any:
        return iter(self.readline, b"")


def _answer(start_response: Callable[..., Any], status: int, message: str) -> list[bytes]:
    """A JSON error answer from the middleware itself, closing the connection."""
    body = orjson.dumps(outcome(status, message))
    _force_close(start_response)
    start_response(f"{status} {REASONS.get(status, 'Error')}", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]


def _force_close(start_response: Callable[..., Any]) -> None:
    """Make gunicorn end the connection after this answer (it ignores a Connection header set by the application)."""
    response = getattr(start_response, "__self__", None)
    if hasattr(response, "force_close"):
        response.force_close()


def guard_bodies(app: Callable[..., Iterable[bytes]], max_body_bytes: int) -> Callable[..., Iterable[bytes]]:
    """WSGI middleware for the request body under gunicorn.

    A chunked body is read here, at most ``max_body_bytes`` (413 above, 400 if its chunks are malformed), and handed
    on with its length, so the limit holds whatever the framing. An answer given without the body read to its end
    closes the connection, so a kept-alive connection is never dropped under the client's next request.
    """
    def guarded(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        length = environ.get("CONTENT_LENGTH") or ""
        if not length and "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower():
            try:
                data = environ["wsgi.input"].read(max_body_bytes + 1)
            except Exception:  # gunicorn's chunk parser errors, or the client gone
                return _answer(start_response, 400, "the chunked request body is malformed or was cut short")
            if len(data) > max_body_bytes:
                return _answer(start_response, 413, f"request body too large (limit {max_body_bytes} bytes)")
            environ["wsgi.input"], length = io.BytesIO(data), str(len(data))
            environ["CONTENT_LENGTH"] = length
        body = _CountingInput(environ["wsgi.input"], int(length) if length.isdigit() else 0)
        environ["wsgi.input"] = body
        result = app(environ, start_response)
        if not body.finished:
            _force_close(start_response)
        return result

    return guarded


class _Gunicorn(BaseApplication):
    def __init__(self, app: Any, options: dict[str, Any], max_body_bytes: int):
        self._app = app
        self._max_body_bytes = max_body_bytes
        self._options = options
        super().__init__()

    def load_config(self) -> None:
        for key, value in self._options.items():
            self.cfg.set(key, value)

    def load(self) -> Any:
        return guard_bodies(self._app, self._max_body_bytes)


def _patch_for_gevent() -> None:
    """Make sockets, locks, thread-locals and threads gevent's, before the application (and its locks, stores and
    HTTP sessions) is built. Modules already imported keep working: they look these up when they use them."""
    from gevent import monkey

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", monkey.MonkeyPatchWarning)
        monkey.patch_all()
    sys.unraisablehook = _quiet_at_exit(sys.unraisablehook)


def _quiet_at_exit(hook: Callable[[Any], None]) -> Callable[[Any], None]:
    """An unraisable-exception hook that drops what Python reports while it shuts down (logging's clean-up then
    meets gevent's thread functions already torn down: noise, not a fault) and passes on everything else."""

    def quiet(unraisable: Any, finalizing: Callable[[], bool] = sys.is_finalizing) -> None:
        if not finalizing():  # bound now: the module's globals are gone by the time Python shuts down
            hook(unraisable)

    return quiet


def _database_calls_in_threads(app: Any) -> None:
    """Under gevent, the database's calls (SQLite or PostgreSQL) go to the worker's pool of real threads (see
    SqliteFile.run_calls_with)."""
    import gevent

    def in_thread(function: Callable[[], Any]) -> Any:
        return gevent.get_hub().threadpool.apply(function)

    state = state_of(app)
    state.store.run_calls_with(in_thread)
    state.auth.replay.run_calls_with(in_thread)


def _after_fork(app: Any) -> None:
    """In each worker as it starts: the made-up calls, and the worker's own database connections and first purges."""
    warm_up(app)
    prepare_storage(app)


def worker_count(settings: Settings) -> int:
    """Workers: as configured, else one per CPU core (the engine is CPU-bound; threads cover I/O waits)."""
    return settings.workers or max(1, os.cpu_count() or 1)


def run(host: str, port: int, settings: Settings | None = None) -> None:
    """Start gunicorn on host:port with the application built once before forking."""
    settings = settings or Settings.load()
    if settings.worker_class == "gevent":
        _patch_for_gevent()
    app = create_app(settings)
    if settings.worker_class == "gevent":
        _database_calls_in_threads(app)
    warm_up(app)  # here, so what it loads is shared by the workers; and in each worker after it forks (post_fork)
    # Everything loaded so far (compiled protocol, models) lives as long as the process: keep it out of the
    # garbage collector's scans, and shared copy-on-write between the forked workers.
    gc.collect()
    gc.freeze()
    options = {
        "bind": f"{host}:{port}",
        "workers": worker_count(settings),
        "worker_class": gevent_worker() if settings.worker_class == "gevent" else JsonErrorWorker,
        "threads": settings.threads,
        "worker_connections": settings.worker_connections,
        "preload_app": True,
        "post_fork": lambda server, worker: _after_fork(app),
        "timeout": 30,
        "graceful_timeout": 10,
        "keepalive": 5,
        "accesslog": None,
        "errorlog": "-",
        "loglevel": settings.log_level.lower(),
        "limit_request_line": 8190,
        "control_socket_disable": True,  # one control socket per user otherwise: a second instance would take it over
    }
    _Gunicorn(app, options, settings.max_body_bytes).run()
