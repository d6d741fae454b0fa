"""``emvae explore`` (the latent explorer in the browser) and ``emvae export-onnx``."""

from __future__ import annotations

import errno
import socket
from pathlib import Path

import typer

from emvae.errors import EmvaeError
from emvae_cli.common import DEVICE, DEVICE_HELP, err_console, user_errors

LOCAL = ("127.0.0.1", "localhost", "::1")


def _check_port(host: str, port: int) -> None:
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


@user_errors
def explore(
    run: Path = typer.Argument(
        ..., help="A run directory (emvae fit -o), or a folder of runs (a menu on the page)."
    ),
    port: int = typer.Option(8050, "--port", min=1, max=65535, help="Port to listen on."),
    host: str = typer.Option(
        "127.0.0.1",
        "--host",
        help="Address to listen on; the default is this machine only (0.0.0.0: every "
        "network interface, without any password).",
    ),
    device: str = typer.Option(DEVICE, "--device", help=DEVICE_HELP),
    out: Path | None = typer.Option(
        None,
        "-o",
        "--out",
        show_default=False,
        help="Folder for saved selections (default RUN/explore).",
    ),
) -> None:
    """Explore a run in the browser: the latent scatter coloured by any column, a particle's
    image, reconstruction and pose-free rendering on a click, sliders that move the
    generator through z, theta and the shift, and selections saved as index lists for
    emvae select --indices and emvae fit --ind. Stops with Ctrl+C."""
    try:
        from emvae.explore_app import make_app, serve
    except ImportError:
        from emvae.explore import EXPLORE_HINT

        raise EmvaeError(EXPLORE_HINT) from None

    _check_port(host, port)
    app = make_app(run, device, out)
    shown = f"[{host}]" if ":" in host else host
    url = f"http://{shown}:{port}/"
    if host not in LOCAL:
        err_console.print(
            f"listening on {host}: anyone who can reach this machine can use the explorer",
            highlight=False,
        )
    typer.echo(f"emvae explore: {url}  (Ctrl+C stops)")
    serve(app, host, port)


@user_errors
def export_onnx(
    run: Path = typer.Argument(..., help="A run directory or a checkpoint (.pt)."),
    out: Path = typer.Option(..., "-o", "--out", help="The ONNX file to write."),
    opset: int = typer.Option(18, "--opset", min=18, help="ONNX opset version."),
    check: bool = typer.Option(
        True, "--check/--no-check", help="Run the file in onnxruntime and compare with torch."
    ),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing file."),
) -> None:
    """Export the generator as ONNX: inputs z (batch, K), theta_deg (batch,) and shift_px
    (batch, 2), output image (batch, C, D, D), batch dynamic. theta_deg turns the canonical
    view counter-clockwise (the particle table's theta_deg); shift_px moves its centre, in
    model pixels, +x right, +y up; the image is the generator's pixel mean (normalised units,
    or probabilities for a Bernoulli model), without CTF."""
    from emvae.render import export_run

    err_console.print(export_run(run, out, opset, check, force), highlight=False, soft_wrap=True)
