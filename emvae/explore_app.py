"""``emvae explore`` -- the web half: the FastAPI app over :mod:`emvae.explore`, the address
checked (:func:`check_port`) and the app served (:func:`serve_explorer`).

This module imports :mod:`emvae.explore` (the library: :class:`~emvae.explore.Explorer`, the
runs served, the request errors) and nothing imports it back (no import circle).

    GET  /                                  the page (emvae/explore.html, explore.js)
    GET  /vendor/{file}                     the scatter's library (emvae/vendor/: regl-scatterplot)
    GET  /api/runs                          the runs served
    GET  /api/runs/{run}                    one run's controls (Explorer.meta)
    GET  /api/runs/{run}/points?x=&y=&colour=[&class=K...]   the scatter as JSON lists
                                            (Explorer.points; class: those classes only)
    GET  /api/runs/{run}/arrays/{column}[?codes=1]  one column as float32 (Explorer.array)
    GET  /api/runs/{run}/colours/{column}[?values=0]  one colouring (Explorer.colours)
    GET  /api/runs/{run}/particles/{index}  one particle's images (Explorer.particle)
    POST /api/runs/{run}/generate           {z, theta_deg, shift_px, class, raw}: generator images
    POST /api/runs/{run}/selections         {indices, name, rest, classes}: write a selection
                                            (or the rest, of every particle or of the classes)

Errors come back as ``{"detail": "..."}`` with a 4xx status (:class:`emvae.explore.RequestError`
carries its own; other emvae errors are 400, a malformed body FastAPI's 422).
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Annotated, Any

import torch
from fastapi import FastAPI, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic import BaseModel, Field

from emvae.errors import EmvaeError
from emvae.explore import HOST, PORT, RequestError, Runs

#: The one line printed when the server is missing (uvicorn, like FastAPI, is a dependency of
#: emvae: missing, the installation is broken).
EXPLORE_HINT = (
    "the explorer's web framework is missing: reinstall emvae (pip install emvae) or "
    "pip install fastapi uvicorn"
)
#: Hosts that only this machine reaches (any other is announced as open to the network).
LOCAL = ("127.0.0.1", "localhost", "::1")

#: The vendored scatter library's files (emvae/vendor/, see its NOTICE), all JavaScript.
VENDOR = ("regl.min.js", "pub-sub-es.js", "regl-scatterplot.esm.js", "regl-shim.js")


class Generate(BaseModel):
    """Images to render: z rows (or one z), one angle each (or one for all), one shift pair
    each (or one for all), with ``--classes`` one class each (or one for all; 1-based, sent
    as ``class``); ``raw`` adds the pixel values to the PNGs."""

    z: list[list[float]] | list[float] | None = None
    theta_deg: list[float] | float = 0.0
    shift_px: list[list[float]] | list[float] = [0.0, 0.0]
    classes: list[float] | float | None = Field(default=None, alias="class")
    raw: bool = False


class Selection(BaseModel):
    """Table positions (0-based) of the selected particles, the name to save them as
    (``selection_NNN`` / ``rest_NNN`` when empty), and ``rest``: write every particle *not*
    listed instead; ``classes`` (1-based): the classes the scatter shows (the indices are of
    them, the rest is theirs)."""

    indices: list[float]
    name: str | None = None
    rest: bool = False
    classes: list[float] | None = None


def static_file(name: str) -> str:
    """One of the page's files (``explore.html``, ``explore.js``) or ``vendor/NAME``."""
    return resources.files("emvae").joinpath(name).read_text(encoding="utf-8")


async def _request_error(request: Request, exc: Exception) -> JSONResponse:
    status = exc.status if isinstance(exc, RequestError) else 400
    return JSONResponse({"detail": str(exc)}, status_code=status)


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    return JSONResponse({"detail": f"internal error: {type(exc).__name__}: {exc}"}, 500)


def make_app(
    run_path: str | Path,
    device: torch.device | str = "cpu",
    out_dir: str | Path | None = None,
    preload: bool = True,
) -> FastAPI:
    """The FastAPI app serving the run at ``run_path`` (or the runs inside that folder).

    ``device``: where the models run ("auto", "cpu", "cuda:N"); ``out_dir``: where selections
    are written (default ``RUN/explore``); ``preload``: load a single run now (so that a broken
    run is an error here, not at the first request). Test it with
    ``fastapi.testclient.TestClient(make_app(...))``."""
    from emvae.data import resolve_device

    dev = resolve_device(device) if isinstance(device, str) else torch.device(device)
    runs = Runs(run_path, dev, out_dir)
    if preload and len(runs.paths) == 1:
        try:
            runs.get(next(iter(runs.paths)))
        except RequestError as e:
            raise EmvaeError(str(e)) from None
    app = FastAPI(title="emvae explore", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.runs = runs
    app.add_exception_handler(EmvaeError, _request_error)
    app.add_exception_handler(Exception, _unexpected)

    @app.get("/", response_class=HTMLResponse)
    def page() -> HTMLResponse:
        return HTMLResponse(static_file("explore.html"))

    @app.get("/explore.js")
    def script() -> Response:
        return Response(static_file("explore.js"), media_type="text/javascript")

    @app.get("/vendor/{name}")
    def vendor(name: str) -> Response:
        if name not in VENDOR:  # a fixed list: nothing else of the disk is reachable
            raise RequestError(404, f"no file {name!r} here")
        return Response(
            static_file(f"vendor/{name}"),
            media_type="text/javascript",
            headers={"Cache-Control": "max-age=86400"},
        )

    @app.get("/favicon.ico")
    def favicon() -> Response:
        return Response(status_code=204)

    @app.get("/api/runs")
    def list_runs() -> dict[str, Any]:
        return {"runs": list(runs.paths)}

    @app.get("/api/runs/{run}")
    def meta(run: str) -> dict[str, Any]:
        return runs.get(run).meta()

    @app.get("/api/runs/{run}/points")
    def points(
        run: str,
        x: str,
        y: str,
        colour: str | None = None,
        classes: Annotated[list[float] | None, Query(alias="class")] = None,
    ) -> dict[str, Any]:
        return runs.get(run).points(x, y, colour, classes)

    @app.get("/api/runs/{run}/arrays/{column}")
    def array(run: str, column: str, codes: bool = False) -> Response:
        a = runs.get(run).array(column, codes)
        data = a.astype("<f4", copy=False).tobytes()
        headers = {"X-Count": str(len(a)), "Cache-Control": "no-store"}
        return Response(data, media_type="application/octet-stream", headers=headers)

    @app.get("/api/runs/{run}/colours/{column}")
    def colours(run: str, column: str, values: bool = True) -> dict[str, Any]:
        return runs.get(run).colours(column, values)

    @app.get("/api/runs/{run}/particles/{index}")
    def particle(run: str, index: int) -> dict[str, Any]:
        return runs.get(run).particle(index)

    @app.post("/api/runs/{run}/generate")
    def generate(run: str, body: Generate) -> dict[str, Any]:
        ex = runs.get(run)
        return ex.generate(body.z, body.theta_deg, body.shift_px, body.raw, body.classes)

    @app.post("/api/runs/{run}/selections")
    def save(run: str, body: Selection) -> dict[str, Any]:
        return runs.get(run).save_selection(body.indices, body.name, body.rest, body.classes)

    return app


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
    host: str = HOST,
    port: int = PORT,
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
    check_port(host, port)
    app = make_app(run, device, out)
    shown = f"[{host}]" if ":" in host else host
    if host not in LOCAL:
        warn(f"listening on {host}: anyone who can reach this machine can use the explorer")
    say(f"emvae explore: http://{shown}:{port}/  (Ctrl+C stops)")
    serve(app, host, port)


def serve(app: FastAPI, host: str = "127.0.0.1", port: int = 8050) -> None:
    """Run ``app`` with uvicorn until interrupted."""
    try:
        import uvicorn
    except ImportError:
        raise EmvaeError(EXPLORE_HINT) from None
    uvicorn.run(app, host=host, port=port, log_level="warning")
