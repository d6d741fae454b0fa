"""Entry point: one Typer app that every command registers on."""

from __future__ import annotations

import typer

from emvae import __version__
from emvae_cli import analyze as analyze_cmd
from emvae_cli import bench as bench_cmd
from emvae_cli import catalog as catalog_cmd
from emvae_cli import explore as explore_cmd
from emvae_cli import fit as fit_cmd
from emvae_cli import prep as prep_cmd
from emvae_cli import relion as relion_cmd
from emvae_cli import report as report_cmd
from emvae_cli import select as select_cmd

app = typer.Typer(
    rich_markup_mode=None,  # help as plain text: [brackets] kept, no <bool> metavars
    name="emvae",
    help="Spatial-VAE for particle stacks and galaxy images: content disentangled from "
    "in-plane rotation and translation.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.command("fit")(fit_cmd.fit)
app.command("encode")(fit_cmd.encode)
app.command("preprocess")(prep_cmd.preprocess)
app.command("info")(prep_cmd.info)
app.command("export-star")(relion_cmd.export_star)
app.command("export-catalog")(catalog_cmd.export_catalog)
app.command("align")(relion_cmd.align)
app.command("select")(select_cmd.select)
app.command("report")(report_cmd.report)
app.command("montage")(report_cmd.montage)
app.command("analyze")(analyze_cmd.analyze)
app.command("convergence")(analyze_cmd.convergence)
app.command("explore")(explore_cmd.explore)
app.command("export-onnx")(explore_cmd.export_onnx)
app.command("simulate")(bench_cmd.simulate)
app.add_typer(bench_cmd.bench_app, name="bench")


def _version(value: bool) -> None:
    if value:
        typer.echo(f"emvae {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """emvae command line."""


if __name__ == "__main__":
    app()
