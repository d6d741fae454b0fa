"""The routes of ``emvae explore`` (FastAPI; :func:`emvae.explore.make_app` builds the app).

    GET  /                                  the page (emvae/explore.html, explore.js)
    GET  /api/runs                          the runs served
    GET  /api/runs/{run}                    one run's controls (Explorer.meta)
    GET  /api/runs/{run}/points?x=&y=&colour=   the scatter (Explorer.points)
    GET  /api/runs/{run}/colours/{column}   one colouring (Explorer.colours)
    GET  /api/runs/{run}/particles/{index}  one particle's images (Explorer.particle)
    POST /api/runs/{run}/generate           {z, theta_deg, shift_px, raw}: generator images
    POST /api/runs/{run}/selections         {indices, name}: write a selection

Errors come back as ``{"detail": "..."}`` with a 4xx status (:class:`emvae.explore.RequestError`
carries its own; other emvae errors are 400, a malformed body FastAPI's 422).
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic import BaseModel

from emvae.errors import EmvaeError
from emvae.explore import RequestError, Runs, static_file


class Generate(BaseModel):
    """Images to render: z rows (or one z), one angle each (or one for all), one shift pair
    each (or one for all); ``raw`` adds the pixel values to the PNGs."""

    z: list[list[float]] | list[float] | None = None
    theta_deg: list[float] | float = 0.0
    shift_px: list[list[float]] | list[float] = [0.0, 0.0]
    raw: bool = False


class Selection(BaseModel):
    """Table positions (0-based) of the selected particles, and the name to save them as
    (``selection_NNN`` when empty)."""

    indices: list[float]
    name: str | None = None


async def _request_error(request: Request, exc: Exception) -> JSONResponse:
    status = exc.status if isinstance(exc, RequestError) else 400
    return JSONResponse({"detail": str(exc)}, status_code=status)


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    return JSONResponse({"detail": f"internal error: {type(exc).__name__}: {exc}"}, 500)


def build(runs: Runs) -> FastAPI:
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

    @app.get("/favicon.ico")
    def favicon() -> Response:
        return Response(status_code=204)

    @app.get("/api/runs")
    def list_runs() -> dict[str, Any]:
        return {"runs": runs.names()}

    @app.get("/api/runs/{run}")
    def meta(run: str) -> dict[str, Any]:
        return runs.get(run).meta()

    @app.get("/api/runs/{run}/points")
    def points(run: str, x: str, y: str, colour: str | None = None) -> dict[str, Any]:
        return runs.get(run).points(x, y, colour)

    @app.get("/api/runs/{run}/colours/{column}")
    def colours(run: str, column: str) -> dict[str, Any]:
        return runs.get(run).colours(column)

    @app.get("/api/runs/{run}/particles/{index}")
    def particle(run: str, index: int) -> dict[str, Any]:
        return runs.get(run).particle(index)

    @app.post("/api/runs/{run}/generate")
    def generate(run: str, body: Generate) -> dict[str, Any]:
        return runs.get(run).generate(body.z, body.theta_deg, body.shift_px, body.raw)

    @app.post("/api/runs/{run}/selections")
    def save(run: str, body: Selection) -> dict[str, Any]:
        return runs.get(run).save_selection(body.indices, body.name)

    return app
