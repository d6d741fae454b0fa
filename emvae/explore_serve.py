"""``emvae explore`` started: the address checked, the explorer's app made
(:func:`emvae.explore_app.make_app`), its URL said, and the app served until interrupted
(:func:`serve_explorer`).

Its own module because the web half (:mod:`emvae.explore_app`) needs FastAPI: this module
imports it only when called, and turns its absence into one line (:data:`EXPLORE_HINT`).
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Callable
from pathlib import Path

from emvae.errors import EmvaeError
from emvae.explore import EXPLORE_HINT

#: Hosts that only this machine reaches (any other is announced as open to the network).
LOCAL = ("127.0.0.1", "localhost", "::1")


def check_port(host: str, port: int) -> None:
    """Fail with one line before loading anything when ``host:port`` cannot be bound."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise EmvaeError(f"{host}:{port} is in use; choose another --port") from None
            raise EmvaeError(f"cannot listen on {host}:{port} ({e.strerror or e})") from None


def serve_explorer(
    run: str | Path,
    host: str = "127.0.0.1",
    port: int = 8050,
    device: str = "auto",
    out: str | Path | None = None,
    *,
    say: Callable[[str], None] = print,
    warn: Callable[[str], None] = print,
) -> None:
    """Serve the explorer of ``run`` (a run directory, or a folder of runs) on ``host:port``
    until interrupted, its models on ``device``, selections saved in ``out`` (default
    ``RUN/explore``). The address is checked and the run loaded first (a failure is one
    :class:`EmvaeError`); then ``warn`` is told when ``host`` is open beyond this machine and
    ``say`` gets the URL."""
    try:
        from emvae.explore_app import make_app, serve
    except ImportError:
        raise EmvaeError(EXPLORE_HINT) from None

    check_port(host, port)
    app = make_app(run, device, out)
    shown = f"[{host}]" if ":" in host else host
    if host not in LOCAL:
        warn(f"listening on {host}: anyone who can reach this machine can use the explorer")
    say(f"emvae explore: http://{shown}:{port}/  (Ctrl+C stops)")
    serve(app, host, port)
