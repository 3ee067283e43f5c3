"""``transferkit serve``: a JSON API and a web page over trained model directories.

>>> from transferkit.serve import ServeSettings, create_app, serve
>>> app = create_app(ServeSettings(models=["runs/ants"], max_batch=32))   # FastAPI app (TestClient, uvicorn)
>>> serve(ServeSettings(models=["runs/ants"]), host="127.0.0.1", port=8000) # blocks

What each task answers is in :mod:`transferkit.serve.handlers` (one handler
per task, a registry); :mod:`transferkit.serve.batching` groups concurrent
requests; :mod:`transferkit.serve.app` holds the routes and the safety rules.
"""

from __future__ import annotations

import ipaddress
import json
import os
from dataclasses import asdict
from typing import Any

from transferkit.errors import TransferkitError


def __getattr__(name: str) -> Any:  # FastAPI loads only when the app is built
    if name in ("ServeSettings", "create_app", "load_models"):
        from transferkit.serve import app

        return getattr(app, name)
    raise AttributeError(name)


def is_loopback(host: str) -> bool:
    """True for addresses only this machine can reach (127.0.0.0/8, ::1, localhost)."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind(host: str, token: str | None) -> None:
    """Refuse a non-loopback bind without a token (anyone on the network could use the models)."""
    if not is_loopback(host) and not token:
        raise TransferkitError(f"Refusing to serve on {host} without a token: anyone who can reach this machine could use "
                               "the models. Give --token SECRET (or TRANSFERKIT_SERVE_TOKEN), or keep --host 127.0.0.1.")


def server_options(settings: Any) -> dict[str, Any]:
    """uvicorn options every ``transferkit serve`` server runs with: the HTTP protocol that closes connections
    whose request headers take longer than ``settings.timeout_s`` (:mod:`transferkit.serve.protocol`), a 5 s
    keep-alive, no Server header, no trust in proxy headers."""
    from transferkit.serve.protocol import HeaderDeadlineProtocol

    HeaderDeadlineProtocol.header_timeout = float(settings.timeout_s)
    return dict(http=HeaderDeadlineProtocol, timeout_keep_alive=5, server_header=False, proxy_headers=False)


def serve(settings: Any, host: str = "127.0.0.1", port: int = 8000, workers: int = 1,
          max_connections: int = 256, log_level: str = "info") -> None:
    """Load the models and serve them with uvicorn until interrupted."""
    import uvicorn

    from transferkit.serve.app import create_app, load_models

    check_bind(host, settings.token)
    common = dict(host=host, port=port, log_level=log_level, limit_concurrency=max_connections,
                  **server_options(settings))
    if workers > 1:
        load_models(settings)  # fail here, with one line, rather than in every worker
        os.environ["TRANSFERKIT_SERVE_SETTINGS"] = json.dumps(asdict(settings))
        uvicorn.run("transferkit.serve.app:app_from_env", factory=True, workers=workers, **common)
    else:
        uvicorn.run(create_app(settings), **common)
