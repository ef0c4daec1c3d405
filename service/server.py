"""Serving the application under gunicorn, configured from the settings (``back-spasm-cds serve``).

The protocol is loaded and compiled once in the master process before the workers fork (preload), so every
worker answers its first request at full speed and shares the compiled content's memory.
"""

from __future__ import annotations

import gc
import os
from typing import Any

from gunicorn.app.base import BaseApplication

from service import create_app
from service.config import Settings


class _Gunicorn(BaseApplication):
    def __init__(self, app: Any, options: dict[str, Any]):
        self._app = app
        self._options = options
        super().__init__()

    def load_config(self) -> None:
        for key, value in self._options.items():
            self.cfg.set(key, value)

    def load(self) -> Any:
        return self._app


def worker_count(settings: Settings) -> int:
    """Workers: as configured, else one per CPU core (the engine is CPU-bound; threads cover I/O waits)."""
    return settings.workers or max(1, os.cpu_count() or 1)


def run(host: str, port: int, settings: Settings | None = None) -> None:
    """Start gunicorn on host:port with the application built once before forking."""
    settings = settings or Settings.load()
    app = create_app(settings)
    # Everything loaded so far (compiled protocol, models) lives as long as the process: keep it out of the
    # garbage collector's scans, and shared copy-on-write between the forked workers.
    gc.collect()
    gc.freeze()
    options = {
        "bind": f"{host}:{port}",
        "workers": worker_count(settings),
        "worker_class": "gthread",
        "threads": settings.threads,
        "preload_app": True,
        "timeout": 30,
        "graceful_timeout": 10,
        "keepalive": 5,
        "accesslog": None,
        "errorlog": "-",
        "loglevel": settings.log_level.lower(),
        "limit_request_line": 8190,
    }
    _Gunicorn(app, options).run()
