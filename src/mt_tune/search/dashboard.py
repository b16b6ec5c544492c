"""Serve optuna-dashboard on a study storage (the embedded default included).

The dashboard is optuna-dashboard's WSGI app on the standard library's WSGI server, opened on
the same storage object the rest of mt-tune uses (so a journal file or an RDB URL both work),
bound to 127.0.0.1 unless asked otherwise.
"""

from __future__ import annotations

import errno
import signal
import threading
from typing import Callable
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import optuna_dashboard

from mt_tune.errors import UserError
from mt_tune.search.storage import open_storage
from mt_tune.search.urls import mask_url, resolve_url


class _QuietHandler(WSGIRequestHandler):
    """No line per HTTP request: the dashboard polls, which would flood the terminal."""

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - base class signature
        pass


def browser_url(host: str, port: int) -> str:
    """Where to point a browser: a wildcard bind is reachable on localhost."""
    shown = "127.0.0.1" if host in ("", "0.0.0.0", "::") else host
    if ":" in shown:
        shown = f"[{shown}]"
    return f"http://{shown}:{port}/dashboard/"


def make_dashboard_server(storage_url: str | None = None, host: str = "127.0.0.1", port: int = 8080) -> WSGIServer:
    """A bound (not yet serving) dashboard server; bad ports are a UserError."""
    url = resolve_url(storage_url)
    app = optuna_dashboard.wsgi(open_storage(url))
    if not 0 <= port <= 65535:
        raise UserError(f"--port: expected 0-65535, got {port}")
    try:
        return make_server(host, port, app, handler_class=_QuietHandler)
    except OSError as e:
        if e.errno == errno.EADDRINUSE:
            raise UserError(f"--port {port}: {host}:{port} is already in use; pick another port") from None
        raise UserError(f"--host {host} --port {port}: cannot listen there: {e.strerror or e}") from None


def serve(storage_url: str | None = None, host: str = "127.0.0.1", port: int = 8080,
          log: Callable[[str], None] = print) -> None:
    """Serve until interrupted (Ctrl-C), after saying where to point the browser."""
    url = resolve_url(storage_url)
    server = make_dashboard_server(url, host, port)
    log(f"optuna-dashboard on {mask_url(url)}")
    log(f"open {browser_url(host, server.server_port)} in a browser (Ctrl-C to stop)")
    # Ctrl-C / SIGTERM set a flag instead of raising: a KeyboardInterrupt raised while a
    # response is being written is caught (and printed) by wsgiref's handler, and the server
    # would go on serving.
    stop = threading.Event()
    handlers = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            handlers[sig] = signal.signal(sig, lambda *_: stop.set())
    server.timeout = 0.5  # how often handle_request comes back to look at the flag
    try:
        while not stop.is_set():
            server.handle_request()
        log("dashboard stopped")
    finally:
        server.server_close()
        for sig, previous in handlers.items():
            signal.signal(sig, previous)
