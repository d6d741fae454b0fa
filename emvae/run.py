"""A run directory: the one place that knows its layout.

    RUN/config.json         the RunConfig (model, training, data sections; run id)
    RUN/metrics.csv         one row per epoch
    RUN/run.log             every line the fit printed, timestamped (emvae.runlog); appended
                            by --resume
    RUN/checkpoints/        last.pt (every epoch) and epoch_NNNN.pt
    RUN/particles.csv|.h5   the particle table (emvae.particles.Particles.table)
    RUN/particles.star      the same poses for RELION
    RUN/report/, montage/, analyze/, convergence/, explore/   what later commands make of it

:class:`Run` reads a finished (or running) directory for report, montage, align and
export-star; the functions below it are how :func:`emvae.train.fit` writes one, atomically, and
how a ``--force`` re-run replaces an old one only once it is complete.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
import torch

from emvae import checkpoint
from emvae.config import RunConfig, read_config
from emvae.errors import ConfigError, EmvaeError, InputError, OutputExistsError
from emvae.io.tables import check_complete, read_table, write_table
from emvae.runlog import LOG
from emvae.safety import MANIFEST, atomic_output, claim_outputs, record_outputs, use_force

if TYPE_CHECKING:
    from emvae.models import SpatialVAE
    from emvae.particles import Particles

CONFIG = "config.json"
METRICS = "metrics.csv"
CHECKPOINTS = "checkpoints"
TABLES = ("particles.h5", "particles.csv")  # the first one present is read
STAR = "particles.star"
LAST = Path(CHECKPOINTS) / "last.pt"
OUTPUTS = (CONFIG, METRICS, LOG, "particles.csv", "particles.h5", STAR, CHECKPOINTS)
REPORT, MONTAGE, ANALYZE, EXPLORE = "report", "montage", "analyze", "explore"
CONVERGENCE = "convergence"
#: Folders of later commands that describe a run; a --force re-run retires them with it. The
#: explorer's selections (EXPLORE) are the user's picks of input rows: they stay.
DERIVED = (REPORT, MONTAGE, ANALYZE, CONVERGENCE)
#: Where a --force re-run trains until its outputs are complete (then they replace the old).
STAGING = ".emvae-replacing"


@dataclass
class Run:
    """An emvae output directory ``path``; its files are read when asked for."""

    path: Path
    _config: RunConfig | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.path = Path(self.path)

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> Run:
        """The run in the folder ``path``; an :class:`InputError` when there is no such folder."""
        p = Path(path)
        if not p.is_dir():
            raise InputError(p, "no such run directory" if not p.exists() else "not a directory")
        return cls(p)

    @property
    def has_config(self) -> bool:
        """Whether the folder holds config.json."""
        return (self.path / CONFIG).exists()

    @property
    def config(self) -> RunConfig:
        """config.json, read once; an :class:`InputError` without one."""
        if self._config is None:
            if not self.has_config:
                raise InputError(self.path, f"is not an emvae run directory (no {CONFIG})")
            self._config = read_config(self.path / CONFIG)
        return self._config

    @classmethod
    def of(cls, source: str | os.PathLike[str]) -> Run | None:
        """The run a checkpoint or run directory belongs to (None for a checkpoint file kept
        elsewhere)."""
        p = Path(source)
        if p.is_dir():
            return cls(p)
        return cls(p.parent.parent) if p.parent.name == CHECKPOINTS else None

    @property
    def last(self) -> Path:
        """The last checkpoint's path (``checkpoints/last.pt``; it may not exist yet)."""
        return self.path / LAST

    def checkpoints(self) -> list[Path]:
        """The numbered checkpoints, oldest first."""
        return sorted((self.path / CHECKPOINTS).glob("epoch_*.pt"))

    def table(self) -> pd.DataFrame:
        """The particle table (``particles.h5``, else ``.csv``), checked against config.json
        when there is one: written by the same run, with as many rows as it fitted."""
        path = next((self.path / n for n in TABLES if (self.path / n).exists()), None)
        if path is None:
            raise InputError(
                self.path, "has no particles.h5 or particles.csv (the fit did not finish?)"
            )
        table = read_table(path)
        if not self.has_config:
            return table
        check_same_run(path, table.attrs.get("run_id", ""), self.config.run_id)
        n = self.config.data.n_images
        if n and len(table) != n:
            raise InputError(
                path,
                f"has {len(table)} particles but config.json describes a fit of {n}: this folder "
                f"mixes outputs of two runs",
            )
        return table

    def metrics(self) -> pd.DataFrame | None:
        """metrics.csv, or None before the first epoch ends."""
        path = self.path / METRICS
        if not path.exists():
            return None
        try:
            metrics = pd.read_csv(path)
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
            msg = str(e).splitlines()[0]
            raise InputError(path, f"not a readable metrics table ({msg})") from None
        if "epoch" not in metrics:
            raise InputError(path, "not an emvae metrics table (no epoch column)")
        check_complete(path, metrics, ours=True)
        return metrics

    def model(
        self, device: torch.device | str = "cpu"
    ) -> tuple[SpatialVAE, RunConfig, dict[str, Any]]:
        """``(model in eval mode, RunConfig, checkpoint dict)`` from checkpoints/last.pt."""
        return load_model(self.path, device)

    def particles(self) -> Particles:
        """The run's own input images, prepared as it prepared them
        (:meth:`emvae.particles.Particles.like`)."""
        from emvae.particles import Particles

        return Particles.like(self.config.data)


def check_same_run(path: Path, made_by: str, described: str, again: str = "") -> None:
    """An output of a run folder (its table, last checkpoint, analyze.json...), written by the
    run ``made_by``, must belong to the run ``described`` by the folder's config.json (either
    may be unknown); ``again``: what makes the output anew, said in the InputError. The one
    place a run id is compared with config.json's."""
    if made_by and described and made_by != described:
        raise InputError(
            path,
            f"was written by another run ({made_by[:8]}) than config.json describes "
            f"({described[:8]}): this folder mixes outputs of two runs{again and '; ' + again}",
        )


def load_checkpoint(source: str | os.PathLike[str]) -> dict[str, Any]:
    """A checkpoint file, or a run folder's last checkpoint (checked against its config.json),
    read onto the CPU."""
    p = Path(source)
    if not p.is_dir():
        return checkpoint.load_checkpoint(p)
    if not (p / LAST).exists():
        raise InputError(p, f"is a directory without {LAST}")
    return _checked_last(p, checkpoint.load_checkpoint(p / LAST))


def _checked_last(folder: Path, ckpt: dict[str, Any]) -> dict[str, Any]:
    """``ckpt``, ``folder``'s last checkpoint, once it is known to belong to the run that
    ``folder``'s config.json describes (when there is one)."""
    if (folder / CONFIG).exists():
        made_by = str(ckpt.get("config", {}).get("run_id", ""))
        check_same_run(folder / LAST, made_by, read_config(folder / CONFIG).run_id)
    return ckpt


def load_model(
    source: str | os.PathLike[str], device: torch.device | str = "cpu"
) -> tuple[SpatialVAE, RunConfig, dict[str, Any]]:
    """Rebuild the model from a checkpoint file or a run folder (:func:`load_checkpoint`):
    ``(model in eval mode on device, RunConfig, checkpoint dict)``."""
    return checkpoint.build_model(load_checkpoint(source), device)


def kept_checkpoints(run: Run) -> list[tuple[int, Path]]:
    """``(epoch, path)`` of every checkpoint ``run`` (a :class:`Run`) kept, oldest
    first: the numbered ones, and ``last.pt`` when its epoch is not among them."""
    found: dict[int, Path] = {}
    for path in run.checkpoints():
        try:
            found[int(path.stem.split("_")[1])] = path
        except (IndexError, ValueError):
            continue
    if run.last.exists():
        epoch = int(load_checkpoint(run.last)["epoch"])
        found.setdefault(epoch, run.last)
    return sorted(found.items())


def checkpoint_of(run: Run, epoch: int) -> Path:
    """The kept checkpoint of ``epoch``; a ConfigError naming the kept epochs when there is
    none."""
    kept = dict(kept_checkpoints(run))
    if epoch not in kept:
        shown = ", ".join(map(str, kept)) or "none"
        raise ConfigError(
            f"{run.path}: no checkpoint of epoch {epoch} was kept (kept: {shown}); fit with "
            f"--checkpoint-every to keep more"
        )
    return kept[epoch]


# ----------------------------------------------------------------------------- writing one


def has_last(out: Path) -> bool:
    """Whether the folder ``out`` holds a last checkpoint."""
    return (out / LAST).exists()


def adopt_legacy_run(out: Path) -> None:
    """A run written before emvae kept manifests (no ``.emvae-outputs.json``) whose
    config.json and particles.h5 carry the same run id is emvae's: its outputs are recorded
    as such, so that --force and --resume work on it as on a new run."""
    if (out / MANIFEST).exists() or not (out / CONFIG).is_file() or not (out / TABLES[0]).is_file():
        return
    try:
        run_id = read_config(out / CONFIG).run_id
        made_by = read_table(out / TABLES[0]).attrs.get("run_id", "")
    except EmvaeError:
        return
    if run_id and made_by == run_id:
        record_outputs(out, [n for n in OUTPUTS if (out / n).is_file()], run_id)


def _holds(path: Path) -> bool:
    """Whether ``path`` is an output: a file, or a folder with something in it (a fit that
    stopped on a bad input leaves an empty checkpoints folder, nothing to protect)."""
    return path.exists() and (not path.is_dir() or any(path.iterdir()))


def check_output_dir(out: str | os.PathLike[str], force: bool = False) -> None:
    """Refuse, before any work is done, an ``out`` holding files of the names a fit writes (or
    retires) that emvae did not write, with or without ``force``; and one holding emvae
    outputs unless ``force``."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"{out}: exists and is not a directory")
    if (out / CHECKPOINTS).is_symlink():
        raise OutputExistsError(f"{out}: checkpoints is a link; emvae will not write through it")
    adopt_legacy_run(out)
    claim_outputs(out, (*OUTPUTS, *DERIVED), force=True)  # the user's files: never replaced
    # a log alone (a fit that stopped on a bad input) is appended to, not protected
    existing = [name for name in OUTPUTS if name != LOG and _holds(out / name)]
    if existing and not force:
        hint = " or --resume to continue it" if has_last(out) else ""
        raise use_force(
            f"{out}: already holds emvae outputs ({', '.join(existing)})", f"overwrite{hint}"
        )


def work_dir(out: Path, force: bool, resume: bool) -> Path:
    """Where a fit writes while it runs: ``out``, unless ``force`` replaces an existing run,
    which stays untouched until the new one is complete (:func:`replace_run`)."""
    staging = out / STAGING
    if resume:
        return staging if force and has_last(staging) else out
    if force and out.is_dir() and any(_holds(out / n) for n in OUTPUTS):
        return staging
    return out


def read_last(out: Path, force: bool) -> dict[str, Any] | None:
    """The checkpoint a ``--resume`` of ``out`` would continue from (that of an interrupted
    ``--force`` re-run when ``force``), read onto the CPU but not yet checked; None when there
    is none. :func:`resume_point` checks it."""
    work = work_dir(out, force, resume=True)
    return checkpoint.load_checkpoint(work / LAST) if has_last(work) else None


def resume_point(out: Path, work: Path, last: dict[str, Any] | None = None) -> dict[str, Any]:
    """The checkpoint a ``--resume`` continues from (checked against config.json): ``last``
    when the caller has read it already (:func:`read_last`), else ``work``'s ``last.pt``."""
    if work == out and has_last(out / STAGING):
        raise EmvaeError(
            f"{out}: holds an interrupted --force re-run in {out / STAGING}; continue that "
            f"one with --resume --force, or delete that folder to resume the old run"
        )
    if not has_last(work):
        raise EmvaeError(f"{out}: nothing to resume (no checkpoints/last.pt)")
    adopt_legacy_run(work)
    claim_outputs(work, (*TABLES, STAR, LOG), force=True)  # the user's files: never replaced
    return load_checkpoint(work) if last is None else _checked_last(work, last)


def prepare_output(out: Path, work: Path, force: bool) -> None:
    """Make ready to write a new run into ``work`` (``out``, or its staging folder): refuse an
    existing run unless ``force``, and a ``checkpoints`` link; clear an interrupted re-run."""
    check_output_dir(out, force)  # refuses out's own checkpoints link
    if (work / CHECKPOINTS).is_symlink():
        raise OutputExistsError(f"{out}: checkpoints is a link; emvae will not write through it")
    if work != out and work.exists():
        shutil.rmtree(work)  # an earlier interrupted --force re-run: emvae's own folder
    (work / CHECKPOINTS).mkdir(parents=True, exist_ok=True)


def replace_run(work: Path, out: Path) -> None:
    """Swap a complete --force re-run into ``out``: the old run's outputs (and the reports and
    montages made from it) are moved aside, the new ones renamed in, then the old deleted."""
    old = out / ".emvae-replaced"
    if old.exists():
        shutil.rmtree(old)
    old.mkdir()
    for name in (*OUTPUTS, *DERIVED, MANIFEST):
        if (out / name).exists() or (out / name).is_symlink():
            os.replace(out / name, old / name)
        if (work / name).exists():
            os.replace(work / name, out / name)
    shutil.rmtree(old)
    shutil.rmtree(work)


def write_config(work: Path, config: RunConfig) -> None:
    """config.json (recorded as emvae's, like every file below)."""
    with atomic_output(work / CONFIG) as tmp:
        tmp.write_text(json.dumps(config.to_dict(), indent=2) + "\n")
    record_outputs(work, [CONFIG], config.run_id)


def write_metrics(
    work: Path, history: list[dict[str, float]], columns: list[str], run_id: str = ""
) -> None:
    """metrics.csv: ``columns``, then any other figures of the last row (``on_epoch``'s)."""
    with atomic_output(work / METRICS) as tmp, open(tmp, "w", newline="") as f:
        extra = [k for k in history[-1] if k not in columns]
        w = csv.DictWriter(f, fieldnames=[*columns, *extra])
        w.writeheader()
        for row in history:
            w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    record_outputs(work, [METRICS], run_id)


def write_checkpoint(work: Path, state: dict[str, Any], keep: bool) -> None:
    """checkpoints/last.pt, and a numbered copy ``epoch_NNNN.pt`` when ``keep``."""
    last = work / LAST
    checkpoint.save_checkpoint(last, state)
    if keep:
        shutil.copyfile(last, work / CHECKPOINTS / f"epoch_{state['epoch']:04d}.pt")


def write_particles(work: Path, table: pd.DataFrame, particles: Particles, run_id: str) -> str:
    """particles.csv, particles.h5 (stamped with ``run_id``) and particles.star; returns the
    STAR layout written (see :meth:`emvae.particles.Particles.write_star`)."""
    write_table(table, work / "particles.csv")
    write_table(table, work / "particles.h5", run_id)
    layout = particles.write_star(table, work / STAR)
    record_outputs(work, ["particles.csv", "particles.h5", STAR], run_id)
    return layout
