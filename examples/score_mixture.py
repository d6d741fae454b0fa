"""Score a fit of a simulated mixture (``emvae simulate --classes K --junk F``) against the
simulation's truth (issue 39: classes, junk and motion in one model).

    emvae simulate sim -n 3000 --size 28 --classes 2 --junk 0.2
    emvae fit sim/particles.star -o fit --zdim 2
    python examples/score_mixture.py fit sim/truth.csv [--kmeans K]

Reads the run's particle table (particles.h5 or .csv, as select and analyze read it) and
matches it to truth.csv by input row (:func:`emvae.bench.mixture_recovery`, which computes
every figure). Real particles are those the truth does not call junk. Prints three tables:

* class agreement: the adjusted Rand index of the table's ``class`` column (written by
  ``emvae fit --classes K``; absent before) with the true class over the real particles, and
  the share of them in the fit's class matched to their own (Hungarian); without a ``class``
  column, or with ``--kmeans K``, the same for k-means (10 initialisations, seed 0) on the
  table's z columns, all particles clustered, junk included (the baseline: k-means on
  today's z; K defaults to the number of true classes);
* junk detection: ROC AUC of the table's ``junk`` score (higher: more likely junk; when the
  table has one) and of the negated per-particle ELBO (the baseline: lower ELBO, more junk),
  over all junk and for each junk kind against the real particles;
* per true class (real particles only): n, the best |Pearson r| of a z dimension with the
  class's true conformation, theta's median error (degrees) in the class's own frame (the
  class's own best offset: each class has its own canonical view), the same with each of 5
  conformation bins in its own frame (as examples/score_checkpoints.py), and the mean
  Pearson r of the x and y shifts. With a ``class`` column these figures are still grouped
  by the true class, not the predicted one: they say how well each molecule is recovered
  whatever class the fit gave its particles.
"""

from __future__ import annotations

import argparse

import numpy as np
import pandas as pd

from emvae.bench import MixtureScore, mixture_recovery
from emvae.run import Run


def _number(v: float, digits: int = 3) -> str:
    return "-" if not np.isfinite(v) else f"{v:.{digits}f}"


def render(score: MixtureScore, run: str) -> str:
    """:func:`mixture_recovery`'s figures as three aligned text tables."""
    a = score.agreement
    lines = [
        f"{run}: {a['particles']:.0f} particles, {a['real']:.0f} real in "
        f"{a['true_classes']:.0f} true classes, {a['junk']:.0f} junk",
        "",
        f"{'class agreement (real particles)':<36}{'ARI':>8}{'matched':>9}",
    ]
    if np.isfinite(a["class_ari"]):
        lines.append(
            f"{'  fit class column':<36}{_number(a['class_ari']):>8}"
            f"{_number(a['class_accuracy']):>9}"
        )
    else:
        lines.append(f"{'  fit class column':<36}{'-':>8}{'-':>9}  (the table has none)")
    if np.isfinite(a["kmeans_ari"]):
        name = f"  k-means on z, K={a['kmeans_k']:.0f}"
        lines.append(f"{name:<36}{_number(a['kmeans_ari']):>8}{_number(a['kmeans_accuracy']):>9}")
    lines += ["", f"{'junk detection (ROC AUC)':<24}{'n':>6}{'junk score':>12}{'-ELBO':>8}"]
    for kind, row in score.junk.iterrows():
        lines.append(
            f"  {kind:<22}{row['n']:>6.0f}{_number(row['junk_auc']):>12}"
            f"{_number(row['elbo_auc']):>8}"
        )
    heads = (("n", 6), ("z |r|", 7), ("theta err", 11), ("in conf. bins", 15), ("shift r", 9))
    lines += ["", f"{'per true class (real)':<24}" + "".join(f"{h:>{w}}" for h, w in heads)]
    for c, row in score.classes.iterrows():
        lines.append(
            f"  class {c:<16}{row['n']:>6.0f}{_number(row['z_conformation_pearson']):>7}"
            f"{_number(row['theta_median_error_deg'], 2):>11}"
            f"{_number(row['theta_median_error_frames_deg'], 2):>15}"
            f"{_number(row['shift_pearson']):>9}"
        )
    lines.append(
        "  (truth's 0-based class numbers; theta errors: median, degrees, in the class's own frame)"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> MixtureScore:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", help="the fit's output folder")
    parser.add_argument("truth", help="the simulation's truth.csv")
    parser.add_argument("--kmeans", type=int, default=None, metavar="K",
                        help="also k-means on z with K clusters")  # fmt: skip
    args = parser.parse_args(argv)
    table = Run.open(args.run).table()
    score = mixture_recovery(table, pd.read_csv(args.truth), args.kmeans)
    print(render(score, args.run))
    return score


if __name__ == "__main__":
    main()
