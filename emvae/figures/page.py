"""The report page: every figure emvae shows, with its title and caption, in one registry
(:data:`FIGURES`), and ``report.html`` made from them.

Each :class:`Figure` names its file, the folder of the run that holds it (``report/``,
``montage/``, ``analyze/``, ``convergence/``), the page's section, its title and its caption: a
function of the run's :class:`Context`, HTML with units. The page is self-contained (figures
embedded) and laid out like a paper's supplementary figures: the run, a summary table in words,
numbered figures with their captions, the montages, convergence and latent analysis.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from emvae._version import __version__
from emvae.config import RunConfig
from emvae.latents import KL_UNUSED

esc = html.escape


@dataclass(frozen=True)
class Context:
    """What captions say about a run: its config and ``report.json``'s content."""

    result: dict[str, Any]
    config: RunConfig

    @property
    def k(self) -> int:
        """The run's number of z dimensions."""
        return self.config.model.zdim


@dataclass(frozen=True)
class Figure:
    """One figure: its file ``name`` in ``folder`` (relative to the run; ``""`` for the
    report's own), the ``section`` of the page that shows it, its ``title``, its ``caption``
    (HTML, from the run's :class:`Context`) and whether it is a picture of pixels (shown
    enlarged with its pixels kept sharp when it is small)."""

    name: str
    folder: str
    section: str
    title: str
    caption: Callable[[Context], str]
    pixels: bool = False


TRAINING, POSES, LATENT, EXAMPLES = "Training", "Poses", "Latent space", "Example particles"
MONTAGE = "What the generator draws (emvae montage)"
CONVERGENCE = "Convergence (emvae convergence)"
ANALYSIS = "Latent analysis (emvae analyze)"


def _of_class(c: Context) -> str:
    """The end of a z figure's caption: which class it draws (``--classes``; the largest)."""
    n = c.result.get("latent_class")
    if n is None:
        return "."
    return f", for class {n} (the largest; emvae montage draws every class)."


def _rotation(c: Context, key: str, default: float) -> float:
    return float(c.result.get("rotation", {}).get(key, default))


def _pose_histograms(c: Context) -> str:
    d = c.config.data
    unit = "Å" if d.apix else ("arcsec" if d.arcsec_per_px else "")
    return (
        "Distribution over the particles of the rotation θ (degrees, counter-clockwise, "
        "relative to the canonical view) and of the shifts x and y (pixels of the input "
        f"images{f'; {unit} on the top axis' if unit else ''})"
        + (
            ", and of the posterior probability of each particle's rotation bin (1: certain)."
            if "rotation_bin_probability" in c.result
            else "."
        )
    )


def _deform_histograms(c: Context) -> str:
    scale = c.result.get("scale")
    return (
        "--pose " + esc(c.config.model.pose) + ": distribution over the particles of the "
        "posterior means of the scale factors along the canonical view's own x and y axes "
        "(1: the canonical size), of the shear γ (dimensionless), and of the largest "
        "displacement of the thin-plate spline's control points (input pixels), as present"
        + (
            "; log-scale correlation with the reference: "
            + ", ".join(f"{n} r = {v['pearson_log']:.2f}" for n, v in scale.items())
            + "."
            if scale
            else "."
        )
    )


def _latent_scatter(c: Context) -> str:
    colour = next((f for z in c.result.get("latent", {}).values() for f in z), None)
    return (
        ("z1 against z2" if c.k == 2 else "The first two principal components of z")
        + ", one point per particle, prior standard-deviation units"
        + (f"; colour: the reference's {esc(colour)}." if colour else ".")
    )


def _latent_metric(c: Context) -> str:
    units = "probability" if c.config.model.likelihood == "bernoulli" else "normalised units"
    return (
        "Top left: the generator at θ = 0, Δx = 0 on a grid of z at quantiles of the "
        "particles' posterior means (z1 along the columns, z2 up the rows; prior "
        "standard-deviation units). The heat maps cover the same grid, cell for cell: how "
        "far the pose-free image moves per unit of z, from the generator's Jacobian J "
        "(pixels × 2) of that image with respect to z. σ₁ ≥ σ₂, the singular values of J: "
        "the change of the image (Euclidean norm over all pixels) per unit step of z along "
        "the fastest and the slowest direction, in (pixel-value units) per unit z ("
        + units
        + " per prior standard deviation of z); the magnification factor √det(JᵀJ) = "
        "σ₁σ₂, the area of image space swept per unit area of z, in (pixel-value units "
        "per unit z)². Where it is small the generator hardly changes with z; where it is "
        "large a small step of z changes the image much" + _of_class(c)
    )


def _z_scatter(c: Context) -> str:
    if c.k == 1:  # emvae.figures.plots.clusters_1d draws no density map
        return (
            "Left: each particle's posterior mean z1 against its rank (particles sorted by z1), "
            "coloured by cluster; right: the histogram of z1 (particles per bin), stacked by "
            "cluster."
        )
    return (
        "Particles' posterior means z1 against z2 coloured by cluster and by density "
        "(particles per cell, log scale)."
    )


# One constant per figure: the writers take its file name from here, the page the rest.
# fmt: off
LEARNING_CURVES = Figure("learning_curves.png", "", TRAINING, "Learning curves", lambda c: (
    "Per epoch, on the training particles (solid) and the held-out test particles "
    "(dashed): the ELBO (higher is better), the reconstruction error −log p(image | z, "
    "pose) and the KL divergence of the posterior from the prior, in nats per particle."
))
LATENT_KL = Figure("latent_kl.png", "", TRAINING, "Information carried by each latent dimension",
                   lambda c: (
    f"Test KL divergence of each z from its prior per epoch, nats per particle; below "
    f"the dotted line ({KL_UNUSED} nats) a dimension counts as unused."
))
POSE_HISTOGRAMS = Figure("pose_histograms.png", "", POSES, "Inferred poses", _pose_histograms)
DEFORM_HISTOGRAMS = Figure("deform_histograms.png", "", POSES,
                           "Inferred scales, shear and bending", _deform_histograms)
THETA_VS_REFERENCE = Figure("theta_vs_reference.png", "", POSES,
                            "Rotation against the reference", lambda c: (
    f"Each particle's θ minus the best global offset ({_rotation(c, 'offset_deg', 0):+.1f}°) "
    f"against the reference angle, degrees; on the dotted diagonal where they agree "
    f"(median error {_rotation(c, 'median_error_deg', float('nan')):.1f}°)."
))
Z_HISTOGRAMS = Figure("z_histograms.png", "", LATENT, "Latent values", lambda c: (
    "Distribution of the particles' posterior means of each z, in units of the prior's "
    "standard deviation; unused dimensions in red."
))
LATENT_SCATTER = Figure("latent_scatter.png", "", LATENT, "Latent space", _latent_scatter)
Z_VS_REFERENCE = Figure("z_vs_reference.png", "", LATENT, "Latent against the reference",
                        lambda c: (
    "Each particle's posterior mean of z (prior standard-deviation units) against the "
    "reference factor that z follows best (in the reference's units); r: Pearson "
    "correlation over the matched particles."
))
LATENT_TRAVERSALS = Figure("latent_traversals.png", "", LATENT, "Per-dimension traversals",
                           lambda c: (
    "One row per z: the generator at θ = 0, Δx = 0 with that z from the particles' 2nd "
    "to 98th percentile (prior standard-deviation units, under the tiles) and the "
    "other dimensions at their medians; a row that does not change is an unused "
    "dimension" + (
        "; with classes, each class's rows over its own particles' z."
        if c.result.get("latent_class") is not None else "."
    )
))
LATENT_METRIC = Figure("latent_metric.png", "", LATENT, "Decoded grid with the local metric",
                       _latent_metric)
JUNK = Figure("junk.png", "", EXAMPLES, "Junk", lambda c: (
    "Histogram of the junk score (the probability that the model does not explain a "
    "particle, from its ELBO and its correlation with its rendering, class by class; "
    f"{c.result.get('junk', {}).get('above_half', 0)} particles above 0.5, the dotted "
    "line) and, below, the particles that score worst, with their image numbers and scores."
), pixels=True)
RECONSTRUCTIONS = Figure("reconstructions.png", "", EXAMPLES,
                         "Example particles and their reconstructions", lambda c: (
    "Held-out particles spread over the range of z. Top: the particle as the model sees "
    "it (preprocessed, normalised), with its image number and inferred θ (degrees); "
    "middle: the generator's mean at the particle's inferred z and pose, its "
    "reconstruction; bottom: the same z at θ = 0, Δx = 0, the canonical view"
    + (" (the renderings are CTF-free; the particles carry their CTFs)."
       if c.config.model.ctf == "on" else ".")
), pixels=True)
INTERPOLATION = Figure("interpolation.png", "montage/", MONTAGE, "Interpolation between particles",
                       lambda c: (
    "Each row: two held-out particles at the ends (as observed, with θ in degrees) and "
    "the generator at θ = 0, Δx = 0 for z equally spaced between their posterior means "
    "(t: the fraction of the way from the left particle to the right one)."
), pixels=True)
MANIFOLD = Figure("manifold.png", "montage/", MONTAGE, "The learned manifold", lambda c: (
    "The generator at θ = 0, Δx = 0 for z on quantiles of the particles' posterior "
    "means: z1 along the columns" + (", z2 up the rows." if c.k == 2 else ".")
), pixels=True)
TRAVERSALS = Figure("traversals.png", "montage/", MONTAGE, "Latent traversals", lambda c: (
    "One row per z, from the particles' 2nd to 98th percentile (values under the "
    "tiles), the other dimensions at their medians; θ = 0, Δx = 0."
), pixels=True)
POSE_TRAVERSALS = Figure("pose_traversals.png", "montage/", MONTAGE, "Pose traversals",
                         lambda c: (
    "One row per pose parameter (--pose " + esc(c.config.model.pose) + "), the others at "
    "the identity and z at the particles' medians: θ over a full turn (degrees), each "
    "shift over ±2 prior standard deviations (pixels), log s_x, log s_y and the shear "
    "over the fitted prior's mean ± 2 of its standard deviations, each spline control "
    "point's x and y displacement over ±2 prior standard deviations (pixels; control "
    "points numbered row by row from the top left). Values under the tiles."
), pixels=True)
PRIOR_SAMPLES = Figure("prior_samples.png", "montage/", MONTAGE, "Samples from the prior",
                       lambda c: (
    "The generator at θ = 0, Δx = 0 for z drawn from N(0, I); each tile's z under it."
), pixels=True)
LATENT_MOTION = Figure("latent_motion.gif", "montage/", MONTAGE, "Motion along the main axis of z",
                       lambda c: (
    "Animation: the generator at θ = 0, Δx = 0 along the first principal component of "
    "the particles' posterior means (2nd to 98th percentile) and back; the marker under "
    "the image shows the position along the path."
), pixels=True)
CANONICAL = Figure("canonical.png", "montage/", MONTAGE, "The canonical view",
                   lambda c: "The generator at θ = 0, Δx = 0 (no latent).", pixels=True)
CONVERGENCE_PLOT = Figure("convergence.png", "convergence/", CONVERGENCE,
                          "Convergence across checkpoints", lambda c: (
    "For each pair of consecutive kept checkpoints, against the later epoch: how well "
    "one epoch's z predicts the other's (r of an affine fit: 1 = the same latents), "
    "the median difference of θ after the best global turn (degrees) and the adjusted "
    "Rand index of their clusters of z (1 = the same partition); and the ELBO of every "
    "epoch (nats per particle), the compared checkpoints marked."
))
CLASS_GENERATOR = Figure("class_generator.png", "analyze/", ANALYSIS,
                         "Generator at each cluster's centre", lambda c: (
    "The generator's mean at θ = 0, Δx = 0 at each cluster's mean z, cluster 1 (the "
    "largest) on the left; each tile's cluster number above it, its particles (and "
    "their fraction) under it."
), pixels=True)
CLASS_AVERAGES = Figure("class_averages.png", "analyze/", ANALYSIS, "Cluster averages", lambda c: (
    "The aligned average of each cluster's particles (input pixels), cluster 1 on the "
    "left; each tile's cluster number above it, its particles (and their fraction) "
    "under it."
), pixels=True)
Z_SCATTER = Figure("z_scatter.png", "analyze/", ANALYSIS, "Clusters in z", _z_scatter)
PCA_SCATTER = Figure("pca_scatter.png", "analyze/", ANALYSIS, "Principal components of z",
                     lambda c: "PC1 against PC2, by cluster and by density.")
UMAP_SCATTER = Figure("umap_scatter.png", "analyze/", ANALYSIS, "UMAP of z",
                      lambda c: "UMAP1 against UMAP2, by cluster and by density.")
PC_TRAJECTORIES = Figure("pc_trajectories.png", "analyze/", ANALYSIS,
                         "Principal-component trajectories", lambda c: (
    "The generator at θ = 0, Δx = 0 from −2 to +2 standard deviations along each "
    "principal component of z."
), pixels=True)
#: Every figure of the page, in the order of its sections (the latent analysis's in the order
#: emvae analyze lists them).
FIGURES = (
    LEARNING_CURVES, LATENT_KL, POSE_HISTOGRAMS, DEFORM_HISTOGRAMS, THETA_VS_REFERENCE,
    Z_HISTOGRAMS, LATENT_SCATTER, Z_VS_REFERENCE, LATENT_TRAVERSALS, LATENT_METRIC, JUNK,
    RECONSTRUCTIONS, INTERPOLATION, MANIFOLD, TRAVERSALS, POSE_TRAVERSALS, PRIOR_SAMPLES,
    LATENT_MOTION, CANONICAL, CONVERGENCE_PLOT, CLASS_GENERATOR, CLASS_AVERAGES, Z_SCATTER,
    PCA_SCATTER, UMAP_SCATTER, PC_TRAJECTORIES,
)
# fmt: on
BY_NAME = {f.name: f for f in FIGURES}
#: Every file ``emvae report`` may write: its own figures and the page.
REPORT_FILES = ("report.json", "report.html", *(f.name for f in FIGURES if not f.folder))
#: What ``emvae montage`` writes, in the order the page shows it.
MONTAGES = tuple(f.name for f in FIGURES if f.folder == "montage/")


@dataclass
class Shown:
    """One figure on the page: its registry entry, its file and a note added to its caption."""

    figure: Figure
    path: Path
    note: str = ""


#: Width of the page's figures (px); pictures of pixels (montages, example particles)
#: narrower than half of it are shown enlarged, up to twice, with their pixels kept sharp.
PAGE_PX = 1000


def _zoom(shown: Shown) -> str:
    """The ``style`` attribute that enlarges a small picture of pixels on the page."""
    if not shown.figure.pixels:
        return ""
    from PIL import Image

    with Image.open(shown.path) as im:
        width = im.width
    zoom = min(2.0, PAGE_PX / width)
    return "" if zoom < 1.25 else f' class="pixels" style="width:{round(width * zoom)}px"'


def _embed(path: Path) -> str:
    kind = "gif" if path.suffix.lower() == ".gif" else "png"
    return f"data:image/{kind};base64,{base64.b64encode(path.read_bytes()).decode()}"


def _summary_rows(result: dict[str, Any], config: RunConfig) -> list[tuple[str, str]]:
    """The summary table in words: (quantity, value with its unit)."""
    m, d = config.model, config.data
    rows: list[tuple[str, str]] = [("Particles", f"{result['particles']:,}")]
    size = f"{m.image_size} × {m.image_size} px as the model sees them"
    if d.input_size and d.input_size != m.image_size:
        size += f" (input {d.input_size} px)"
    if d.apix:
        size += f"; input pixel size {d.apix:.3g} Å"
    elif d.arcsec_per_px:
        size += f"; input pixel scale {d.arcsec_per_px:.3g} arcsec"
    rows.append(("Images", size))
    generators = {
        "spatial": "coordinate-MLP (spatial)",
        "broadcast": "spatial broadcast (CNN on the transformed coordinates)",
    }
    text = f"{generators.get(m.generator, 'vanilla (pixels)')} generator, {m.zdim} latent "
    text += f"dimension{'s' if m.zdim != 1 else ''}, {m.likelihood.capitalize()} likelihood"
    rows.append(("Model", text))
    posterior = f"{m.rotation_bins} rotation bins" if m.binned else "Gaussian rotation posterior"
    rows.append(("Pose network", f"{m.encoder}, {posterior}"))
    ctf = {"on": "modelled in the likelihood", "phase-flip": "images phase-flipped"}
    text = ctf.get(m.ctf, "not modelled") + ("" if m.ctf == "off" else f" (--ctf {m.ctf})")
    rows.append(("CTF", text))
    last = result.get("final_epoch")
    if last:
        rows.append(("Epochs trained", f"{int(last.get('epoch', 0))}"))
        for key, what in (
            ("test_elbo", "Final test ELBO"),
            ("test_error", "Final test reconstruction error −log p"),
            ("test_kl", "Final test KL divergence"),
        ):
            if key in last:
                rows.append((what, f"{last[key]:.2f} nats per particle"))
    bins = result.get("rotation_bin_probability")
    if bins:
        text = f"median probability of a particle's rotation bin {bins['median']:.2f}; "
        text += f"{bins['fraction_above_0.9']:.0%} of the particles above 0.9"
        rows.append(("Rotation certainty", text))
    usage = result.get("latent_usage", [])
    for u in usage:
        text = "used" if u["used"] else "UNUSED (every particle gets the same z)"
        text += f": KL {u['kl']:.3f} nats; spread of the posterior means {u['spread']:.3g} "
        text += f"vs a posterior std of {u['width']:.3g} (prior std units)"
        rows.append((f"Latent {u['name']}", text))
    if "reference" not in result:
        return rows
    text = f"{result['reference']} ({result['matched']:,} particles matched by image name)"
    rows.append(("Reference", text))
    for key, frame in (("rotation", ""), ("rotation_body", " (body frame)")):
        if rot := result.get(key):
            text = f"circular correlation {rot['circular_correlation']:.3f}; median error "
            text += f"{rot['median_error_deg']:.1f}° after a global offset of "
            text += f"{rot['offset_deg']:+.1f}° ({rot['median_error_with_flip_deg']:.1f}° if a "
            text += f"reflection is allowed); {rot['within_10_deg']:.0%} of the particles "
            rows.append((f"Rotation vs reference{frame}", text + "within 10°"))
    for key, frame in (("shift", ""), ("shift_body", " (body frame)")):
        if sh := result.get(key):
            text = f"Pearson r {sh['pearson_x']:.3f} (x), {sh['pearson_y']:.3f} (y)"
            if "rms_error_px" in sh:
                rms = f"{sh['rms_error_px']:.2f} px"
                if d.apix:
                    rms += f" ({sh['rms_error_px'] * d.apix:.2f} Å)"
                text += "; after removing the canonical centre's offset "
                text += f"({sh['offset_x_px']:+.2f}, {sh['offset_y_px']:+.2f}) px: RMS error "
                text += f"{rms}, r {sh['pearson_x_after_offset']:.3f} (x), "
                text += f"{sh['pearson_y_after_offset']:.3f} (y)"
            rows.append((f"Shift vs reference{frame}", text))
    unused = {u["name"] for u in usage if not u["used"]}
    for z, factors in result.get("latent", {}).items():
        note = " (z unused: this correlation is noise)" if z in unused else ""
        for f, r in factors.items():
            text = f"Pearson r {r['pearson']:+.3f}, Spearman ρ {r['spearman']:+.3f}{note}"
            rows.append((f"{z} vs {f}", text))
    return rows


def _provenance(result: dict[str, Any], config: RunConfig) -> list[tuple[str, str]]:
    """Who made the run and how: (label, HTML)."""
    run = f"<code>{esc(result['run'])}</code>"
    run += f" (run id {esc(config.run_id[:8])})" if config.run_id else ""
    fitted = f"emvae {esc(config.version or 'unknown')}"
    fitted += f", {esc(config.created.replace('T', ' '))}" if config.created else ""
    command = (
        f"<code>{esc(config.command)}</code>"
        if config.command
        else "unknown (not recorded in config.json: a fit through the library, emvae.fit, or "
        "by an emvae that did not record it)"
    )
    return [
        ("Run", run),
        ("Fitted with", fitted),
        ("Command line", command),
        ("Report made by", f"emvae {esc(__version__)}"),
    ]


def _montages(folder: Path, last_checkpoint: Path) -> list[Shown]:
    """The montages ``emvae montage`` wrote into ``folder`` (RUN/montage), as figures of the
    page; each one older than the run's last checkpoint says so (made from an earlier state
    of the fit)."""
    shown = []
    # a model of several classes (--classes): one set per class, in montage/classN
    classes = sorted(
        (p for p in folder.glob("class*") if p.name[5:].isdigit()), key=lambda p: int(p.name[5:])
    )
    for name in MONTAGES:
        for sub in classes or [folder]:
            path = sub / name
            if not path.exists():
                continue
            stamp = last_checkpoint.exists() and last_checkpoint.stat().st_mtime
            note = f" <b>Class {sub.name[5:]}.</b>" if classes else ""
            if stamp and path.stat().st_mtime < stamp:
                note += " <b>Made before the run's last checkpoint: run emvae montage again.</b>"
            shown.append(Shown(BY_NAME[name], path, note))
    return shown


def _convergence_part(made: dict[str, Any] | None, run: str) -> tuple[str, list[Shown]]:
    """The convergence section: the last pair of kept checkpoints in numbers, and the figure;
    a pointer to the command when there is none."""
    if made is None:
        return (
            f'<p class="missing">Not measured yet: <code>emvae convergence {esc(run)}'
            "</code> compares the poses, z and clusters of consecutive kept checkpoints.</p>",
            [],
        )
    rows = []
    for pair in made.get("pairs", [])[-3:]:  # the last pairs: has it settled?

        def num(key: str, fmt: str, pair: dict[str, Any] = pair) -> str:
            v = pair.get(key)
            return "–" if v is None or v != v else format(v, fmt)

        rows.append(
            f"<tr><td>{pair['epoch_a']} → {pair['epoch_b']}</td><td>{num('z_corr', '.3f')}</td>"
            f"<td>{num('theta_diff_deg', '.2f')}°</td><td>{num('cluster_ari', '.3f')}</td>"
            f"<td>{num('test_elbo', '.2f')}</td></tr>"
        )
    text = (
        f"<p>{made.get('particles', '')} particles compared between consecutive kept "
        "checkpoints (the last pairs below; all of them in <code>convergence.csv</code>).</p>"
        '<table class="summary"><tr><th>epochs</th><th>z agreement (r)</th>'
        "<th>θ difference (median)</th><th>clusters (ARI)</th><th>test ELBO</th></tr>"
        f"{''.join(rows)}</table>"
    )
    path = Path(made["folder"]) / CONVERGENCE_PLOT.name
    return text, [Shown(CONVERGENCE_PLOT, path)] if path.exists() else []


def _analysis_part(analysis: dict[str, Any]) -> tuple[str, list[Shown]]:
    """The latent-analysis section's text (cluster sizes, explained variance) and figures."""
    folder = Path(analysis["folder"])
    n = max(1, int(analysis.get("particles", 0)))
    rows = "".join(
        f"<tr><td>{c}</td><td>{size:,}</td><td>{size / n:.1%}</td></tr>"
        for c, size in enumerate(analysis.get("cluster_sizes", []), start=1)
    )
    explained = ", ".join(
        f"PC{j}: {e:.1%}" for j, e in enumerate(analysis.get("explained_variance_ratio", []), 1)
    )
    notes = "".join(f"<p>{esc(t)}</p>" for t in analysis.get("notes", []))
    method = esc(str(analysis.get("method", "")))
    what = f"clusters of z ({method}, seed {analysis.get('seed')}), numbered by size"
    if method == "classes":
        what = "classes the model inferred (--classes), numbered as in the table"
    text = f"""<p>{analysis.get("k")} {what}; PCA of z, explained variance {esc(explained)}.</p>
<table class="summary"><tr><th>cluster</th><th>particles</th><th>fraction</th></tr>{rows}</table>
{notes}"""
    names = analysis.get("figures", [])
    return text, [Shown(BY_NAME[n], folder / n) for n in names if (folder / n).exists()]


CSS = """body{font-family:Helvetica,Arial,sans-serif;max-width:1040px;margin:2em auto;
padding:0 1em;color:#222;line-height:1.4}
h1{font-size:1.6em;margin-bottom:0.2em}h2{font-size:1.25em;border-bottom:1px solid #ccc;
padding-bottom:0.2em;margin-top:1.8em}
table.summary{border-collapse:collapse;margin:0.5em 0;font-size:0.95em}
table.summary th,table.summary td{text-align:left;vertical-align:top;padding:0.25em 0.8em;
border-bottom:1px solid #eee}table.summary th{font-weight:600;white-space:nowrap}
figure{margin:1.2em 0}figure img{max-width:100%;height:auto;display:block}
img.pixels{image-rendering:pixelated}
figcaption{font-size:0.95em;margin-top:0.4em;max-width:900px}
.warning{color:#a00;font-weight:bold}.missing{color:#666;font-style:italic}
code{font-size:0.9em;background:#f4f4f4;padding:0 0.2em}"""


def html_page(
    result: dict[str, Any], dest: Path, config: RunConfig, montages: Path, last_checkpoint: Path
) -> str:
    """``report.html``: ``report.json``'s ``result`` in words and the figures it lists (in
    ``dest``), then the run's montages (in ``montages``), its convergence and its latent
    analysis, each figure numbered and embedded with its caption from :data:`FIGURES`."""
    context = Context(result, config)
    counter = [0]

    def figure(shown: Shown) -> str:
        counter[0] += 1
        f, n = shown.figure, counter[0]
        sub = shown.path.parent.name  # where in the run: montage/class2/... for one class's
        where = f"{f.folder}{sub + '/' if sub.startswith('class') else ''}{shown.path.name}"
        return (
            f'<figure id="figure-{n}"><img src="{_embed(shown.path)}"{_zoom(shown)} '
            f'alt="Figure {n}: {esc(f.title)}">'
            f"<figcaption><b>Figure {n}. {esc(f.title)}.</b> {f.caption(context)}{shown.note} "
            f'<span class="missing">({esc(where)})</span>'
            "</figcaption></figure>"
        )

    def table(rows: list[tuple[str, str]], escape: bool = True) -> str:
        cells = "".join(
            f"<tr><th>{esc(a)}</th><td>{esc(b) if escape else b}</td></tr>" for a, b in rows
        )
        return f'<table class="summary">{cells}</table>'

    parts = [
        f"<h1>emvae report</h1><p>{esc(Path(result['run']).name or result['run'])}: "
        "spatial-VAE fit of a particle stack; the numbers behind this page are in "
        "<code>report.json</code>.</p>",
        "".join(f'<p class="warning">{esc(w)}</p>' for w in result.get("warnings", [])),
        "<h2>The run</h2>",
        table(_provenance(result, config), escape=False),
        "<h2>Summary</h2>",
        table(_summary_rows(result, config)),
    ]
    made = set(result["figures"])
    for section in (TRAINING, POSES, LATENT, EXAMPLES):
        shown = [Shown(f, dest / f.name) for f in FIGURES if f.section == section]
        shown = [s for s in shown if s.figure.name in made]
        if shown:
            parts += [f"<h2>{esc(section)}</h2>", *map(figure, shown)]
    shown = _montages(montages, last_checkpoint)
    parts += [f"<h2>{MONTAGE}</h2>", *map(figure, shown)]
    if not shown:
        parts.append(
            f'<p class="missing">No montages yet: <code>emvae montage {esc(result["run"])}</code> '
            "draws interpolations, the manifold and prior samples, and the report shows them.</p>"
        )
    text, shown = _convergence_part(result.get("convergence"), result["run"])
    parts += [f"<h2>{CONVERGENCE}</h2>", text, *map(figure, shown)]
    if result.get("analyze") is not None:
        text, shown = _analysis_part(result["analyze"])
        parts += [f"<h2>{ANALYSIS}</h2>", text, *map(figure, shown)]
    body = "\n".join(p for p in parts if p)
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>emvae report: {esc(result["run"])}</title>
<style>{CSS}</style></head>
<body>
{body}
</body></html>
"""
