"""What emvae never does to a user's files (issue 14), one row per case: the input made on
the fly, the command, and the expected one-line message or behaviour.

Every refusal must name the file and leave the user's files byte for byte as they were."""

from __future__ import annotations

import errno
import hashlib
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import starfile
from conftest import SMALL, runner
from emvae_cli.main import app

from emvae.errors import OutputExistsError
from emvae.io import read_table
from emvae.io.mrc import write_mrc
from emvae.safety import MANIFEST, atomic_output, record_outputs, refuse_existing


def _digest(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (relative name -> sha256), to prove nothing changed."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture
def run(tiny_stack, tmp_path):
    """A finished fit of the tiny stack, with a report folder made from it."""
    out = tmp_path / "run"
    r = runner.invoke(app, ["fit", str(tiny_stack), "-o", str(out), *SMALL])
    assert r.exit_code == 0, r.output
    (out / "report").mkdir()
    (out / "report" / "report.json").write_text("{}")
    record_outputs(out / "report", ["report.json"])  # as `emvae report` records what it wrote
    return out


def _star_input(tiny_stack: Path, folder: Path, name: str = "particles.star") -> Path:
    n = 60
    star = folder / name
    star.parent.mkdir(parents=True, exist_ok=True)
    particles = pd.DataFrame(
        {"rlnImageName": [f"{k}@{tiny_stack}" for k in range(1, n + 1)], "rlnDefocusU": 1e4}
    )
    starfile.write(particles, star)
    return star


# ---------------------------------------------------------------------------------------------
# 1. An output that is an input is refused, with or without --force.


def _fit_over_input_star(tiny_stack, tmp_path, run):
    proj = tmp_path / "proj"
    star = _star_input(tiny_stack, proj)
    return star, ["fit", str(star), "-o", str(proj), "--force", *SMALL]


def _encode_over_input_star(tiny_stack, tmp_path, run):
    star = _star_input(tiny_stack, tmp_path / "p")
    return star, ["encode", str(run), str(star), "-o", str(star.with_suffix(".csv")), "--force"]


def _preprocess_over_input(tiny_stack, tmp_path, run):
    return tiny_stack, ["preprocess", str(tiny_stack), "-o", str(tiny_stack), "--force", "-q"]


def _align_over_input(tiny_stack, tmp_path, run):
    return tiny_stack, ["align", str(run), "-o", str(tiny_stack), "--force", "-q"]


def _export_over_input(tiny_stack, tmp_path, run):
    star = _star_input(tiny_stack, tmp_path / "p")
    return star, ["export-star", str(run), "--input", str(star), "-o", str(star), "--force"]


def _export_over_link_to_input(tiny_stack, tmp_path, run):
    star = _star_input(tiny_stack, tmp_path / "p")
    link = tmp_path / "link.star"
    link.symlink_to(star)
    return star, ["export-star", str(run), "--input", str(star), "-o", str(link), "--force"]


@pytest.mark.parametrize(
    "case",
    [
        _fit_over_input_star,
        _encode_over_input_star,
        _preprocess_over_input,
        _align_over_input,
        _export_over_input,
        _export_over_link_to_input,
    ],
    ids=lambda f: f.__name__.strip("_"),
)
def test_an_output_that_is_an_input_is_refused(case, tiny_stack, tmp_path, run):
    victim, args = case(tiny_stack, tmp_path, run)
    before = victim.read_bytes()
    r = runner.invoke(app, args)
    assert r.exit_code == 1, r.output
    assert "is an input of this command" in r.output and "Traceback" not in r.output
    assert victim.read_bytes() == before


# ---------------------------------------------------------------------------------------------
# 2. A --force re-run replaces the old run only once it is complete.


def test_an_interrupted_force_rerun_leaves_the_old_run_intact(run, tiny_stack, monkeypatch):
    import emvae.train

    before = _digest(run)
    calls = {"n": 0}
    real = emvae.train._train_epoch

    def dies_in_epoch_2(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(emvae.train, "_train_epoch", dies_in_epoch_2)
    r = runner.invoke(app, ["fit", str(tiny_stack), "-o", str(run), "--force", *SMALL])
    assert r.exit_code == 130, r.output
    assert {k: v for k, v in _digest(run).items() if not k.startswith(".emvae-r")} == before
    # resuming is explicit: the old run, or the interrupted re-run
    r = runner.invoke(app, ["fit", str(tiny_stack), "-o", str(run), "--resume", *SMALL])
    assert r.exit_code == 1 and "--resume --force" in r.output
    monkeypatch.setattr(emvae.train, "_train_epoch", real)
    r = runner.invoke(app, ["fit", str(tiny_stack), "-o", str(run), "--resume", "--force", *SMALL])
    assert r.exit_code == 0, r.output
    assert not (run / ".emvae-replacing").exists() and not (run / "report").exists()
    assert len(read_table(run / "particles.csv")) == 60


def test_a_force_rerun_on_a_bad_input_leaves_the_old_run_intact(run, tmp_path):
    before = _digest(run)
    bad = tmp_path / "bad.mrcs"
    bad.write_bytes(b"not an mrc file at all" * 10)
    r = runner.invoke(app, ["fit", str(bad), "-o", str(run), "--force", *SMALL])
    assert r.exit_code == 1 and str(bad) in r.output
    assert _digest(run) == before


def test_a_complete_force_rerun_replaces_outputs_and_retires_reports(run, tiny_stack):
    old = (run / "particles.csv").read_bytes()
    for name in ("montage", "analyze", "explore"):
        (run / name).mkdir(exist_ok=True)
    (run / "explore" / "picked.txt").write_text("3\n")  # the user's selection: it stays
    r = runner.invoke(
        app, ["fit", str(tiny_stack), "-o", str(run), "--force", "--seed", "7", *SMALL]
    )
    assert r.exit_code == 0, r.output
    assert (run / "particles.csv").read_bytes() != old
    for name in ("report", "montage", "analyze"):  # made from the old run: would mislabel it
        assert not (run / name).exists()
    assert (run / "explore" / "picked.txt").read_text() == "3\n"
    assert sorted(p.name for p in run.iterdir() if p.name.startswith(".")) == [MANIFEST]


def _users_star(tmp_path, tiny_stack, run):
    folder = tmp_path / "rdata"
    (folder / "p.mrcs").parent.mkdir()
    (folder / "p.mrcs").write_bytes(tiny_stack.read_bytes())
    star = _star_input(folder / "p.mrcs", folder)  # the user's own RELION STAR
    return star, ["fit", str(folder / "p.mrcs"), "-o", str(folder), *SMALL]


def _users_csv_in_a_run(tmp_path, tiny_stack, run):
    (run / "particles.csv").write_text("image,theta_deg\n1@mine.mrcs,3\n")  # edited by hand
    return run / "particles.csv", ["fit", str(tiny_stack), "-o", str(run), *SMALL]


def _users_file_in_checkpoints(tmp_path, tiny_stack, run):
    notes = run / "checkpoints" / "notes.txt"
    notes.write_text("which epoch looked best")
    return notes, ["fit", str(tiny_stack), "-o", str(run), *SMALL]


def _users_file_in_report(tmp_path, tiny_stack, run):
    mine = run / "report" / "figure_for_the_paper.png"
    mine.write_bytes(b"PNG")
    return mine, ["fit", str(tiny_stack), "-o", str(run), *SMALL]


@pytest.mark.parametrize(
    "case",
    [_users_star, _users_csv_in_a_run, _users_file_in_checkpoints, _users_file_in_report],
    ids=lambda f: f.__name__.strip("_"),
)
@pytest.mark.parametrize("force", [False, True], ids=["plain", "force"])
def test_a_fit_never_replaces_a_file_emvae_did_not_write(case, force, tiny_stack, tmp_path, run):
    """Only files emvae wrote (recorded in the folder's manifest, same content) are replaced,
    and only with --force; any other file a fit would write over or retire is refused by name,
    with or without --force (issue 38)."""
    victim, args = case(tmp_path, tiny_stack, run)
    folder = Path(args[args.index("-o") + 1])
    before = _digest(folder)
    r = runner.invoke(app, [*args, *(["--force"] if force else [])])
    assert r.exit_code == 1, r.output
    said = " ".join(r.output.split())
    assert "emvae did not write" in said and victim.name in said and "Traceback" not in said
    assert _digest(folder) == before


def test_a_run_from_before_manifests_is_still_emvaes(run, tiny_stack):
    """A run written before emvae kept manifests: config.json and particles.h5 carry one run
    id, so --resume and --force treat its outputs as emvae's."""
    (run / MANIFEST).unlink()
    r = runner.invoke(app, ["fit", str(tiny_stack), "-o", str(run), "--resume", "-n", "3", "-q"])
    assert r.exit_code == 0, r.output
    (run / MANIFEST).unlink()
    r = runner.invoke(app, ["fit", str(tiny_stack), "-o", str(run), "--force", *SMALL])
    assert r.exit_code == 0, r.output


def test_a_second_fit_into_a_locked_run_refuses_naming_the_first(run, tiny_stack):
    """Two fits into one folder would mix their outputs: the second refuses in one line,
    naming the process that holds the folder (issue 38)."""
    import fcntl

    from emvae.safety import LOCK

    before = _digest(run)
    with open(run / LOCK, "w") as f:
        f.write("4242\n")
        f.flush()
        fcntl.flock(f, fcntl.LOCK_EX)
        for extra in (["--force"], ["--resume", "-n", "3"]):
            r = runner.invoke(app, ["fit", str(tiny_stack), "-o", str(run), *extra, *SMALL])
            assert r.exit_code == 1, r.output
            said = " ".join(r.output.split())
            assert "process 4242" in said and len(r.output.strip().splitlines()) == 1, said
    assert {k: v for k, v in _digest(run).items() if k != LOCK} == before
    r = runner.invoke(app, ["fit", str(tiny_stack), "-o", str(run), "--force", *SMALL])
    assert r.exit_code == 0, r.output  # the lock went with its holder
    assert not (run / LOCK).exists()


@pytest.mark.parametrize(
    ("command", "name"),
    [("report", "report.html"), ("montage", "manifold.png"), ("analyze", "clusters.csv")],
)
def test_report_montage_analyze_never_replace_a_users_file(run, tmp_path, command, name):
    """report, montage and analyze -o DIR refuse a file of the user's by name, with or without
    --force; emvae's own earlier outputs there are replaced only with --force (issue 38)."""
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / name).write_text("the user's own")
    for extra in ([], ["--force"]):
        r = runner.invoke(app, [command, str(run), "-o", str(folder), *extra])
        assert r.exit_code == 1, r.output
        said = " ".join(r.output.split())
        assert "emvae did not write" in said and name in said and "Traceback" not in said
    assert [p.name for p in folder.iterdir()] == [name]
    (folder / name).unlink()
    assert runner.invoke(app, [command, str(run), "-o", str(folder)]).exit_code == 0
    r = runner.invoke(app, [command, str(run), "-o", str(folder)])
    assert r.exit_code == 1 and "--force" in r.output, r.output
    r = runner.invoke(app, [command, str(run), "-o", str(folder), "--force"])
    assert r.exit_code == 0, r.output


# ---------------------------------------------------------------------------------------------
# 3. A failed write leaves no complete-looking output and no temporary file.


def test_a_full_disk_leaves_no_table_and_no_temporary_file(tiny_stack, tmp_path, monkeypatch):
    def full(self, path, *args, **kwargs):
        Path(path).write_text("image,theta_deg\n1@x,3.0\n")  # a truncated table
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(pd.DataFrame, "to_csv", full)
    out = tmp_path / "run"
    r = runner.invoke(app, ["fit", str(tiny_stack), "-o", str(out), *SMALL])
    assert r.exit_code == 1 and "No space left on device" in r.output
    assert "Traceback" not in r.output and len(r.output.strip().splitlines()) <= 3
    assert not (out / "particles.csv").exists()
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize("command", ["preprocess", "align"])
@pytest.mark.parametrize("full", ["disk_usage", "fallocate"])
def test_a_full_disk_stops_a_memory_mapped_write_in_one_line(
    run, tiny_stack, tmp_path, monkeypatch, command, full
):
    """A memory-mapped MRCS write on a full disk died by SIGBUS and left a .tmp: the space is
    checked and reserved first; one line, no temporary file (issue 38)."""
    import shutil

    if full == "disk_usage":
        usage = shutil.disk_usage(tmp_path)
        monkeypatch.setattr(shutil, "disk_usage", lambda p: usage._replace(free=10_000))
    else:

        def no_space(fd, offset, length):
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(os, "posix_fallocate", no_space)
    folder = tmp_path / "full"
    folder.mkdir()
    source = [str(tiny_stack)] if command == "preprocess" else [str(run)]
    out = folder / "c.mrcs"
    r = runner.invoke(app, [command, *source, "-o", str(out), "-q"])
    assert r.exit_code == 1, r.output
    assert len(r.output.strip().splitlines()) == 1 and "Traceback" not in r.output, r.output
    assert "MiB" in r.output and list(folder.iterdir()) == []


def test_atomic_output_never_follows_a_planted_link(tmp_path):
    target = tmp_path / "precious.txt"
    target.write_text("months of work")
    for planted in ("last.pt.tmp", "particles.star.partial"):
        (tmp_path / planted).symlink_to(target)
    with atomic_output(tmp_path / "last.pt") as tmp:
        assert not tmp.is_symlink() and tmp.parent == tmp_path
        tmp.write_text("checkpoint")
    assert target.read_text() == "months of work"
    assert (tmp_path / "last.pt").read_text() == "checkpoint"
    assert oct((tmp_path / "last.pt").stat().st_mode & 0o777) != oct(0o600)


def test_atomic_output_removes_its_temporary_file_on_failure(tmp_path):
    with pytest.raises(RuntimeError), atomic_output(tmp_path / "t.csv") as tmp:
        tmp.write_text("half")
        raise RuntimeError
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------------
# 4. Bad inputs and options: one clear line, exit 1 (or Typer's usage error, exit 2).


def _write_ind(tmp_path, values):
    p = tmp_path / "ind.npy"
    np.save(p, np.asarray(values, dtype=np.int64))
    return p


CASES = [
    # (id, extra files made on the fly -> args, exit code, words the message must hold)
    ("ind-duplicates", lambda s, t: ["--ind", str(_write_ind(t, [0, 1, 1]))], 1, "more than once"),
    ("ind-too-long", lambda s, t: ["--ind", str(_write_ind(t, np.arange(61) % 60))], 1, "61"),
    ("seed-negative", lambda s, t: ["--seed", "-1"], 2, "--seed"),
    ("seed-too-large", lambda s, t: ["--seed", str(2**64)], 2, "--seed"),
    ("out-under-a-file", lambda s, t: ["-o", str(s) + "/run"], 1, "cannot write here"),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_fit_options_get_one_line(case, tiny_stack, tmp_path):
    _, make, code, words = case
    args = make(tiny_stack, tmp_path)
    out = [] if "-o" in args else ["-o", str(tmp_path / "run")]
    r = runner.invoke(app, ["fit", str(tiny_stack), *out, *args, *SMALL])
    assert r.exit_code == code, r.output
    assert words in r.output and "Traceback" not in r.output


def _negative_optics_apix(stack: Path, tmp: Path) -> list[str]:
    star = tmp / "neg.star"
    optics = pd.DataFrame({"rlnOpticsGroup": [1], "rlnImagePixelSize": [-1.5]})
    names = [f"{k}@{stack}" for k in range(1, 61)]
    starfile.write({"optics": optics, "particles": pd.DataFrame({"rlnImageName": names})}, star)
    return ["fit", str(star), "-o", str(tmp / "r"), *SMALL]


def _negative_width(stack: Path, tmp: Path, command: str = "info") -> list[str]:
    p = _mrc(tmp / "neg.mrcs", np.zeros((60, 20, 20)), nx=-20)
    return [command, str(p), *(["-o", str(tmp / "r"), *SMALL] if command == "fit" else [])]


# (id, args made on the fly from the tiny stack, a run and tmp_path, words the line must hold)
BAD_VALUES = [
    *[
        (f"fit-apix-{v}", lambda s, r, t, v=v: ["fit", str(s), "-o", str(t / "r"), "--apix", v],
         "--apix must be a finite number > 0")
        for v in ("inf", "nan", "-1", "0")
    ],
    *[
        (f"export-apix-{v}", lambda s, r, t, v=v: ["export-star", str(r), "-o", str(t / "x.star"),
                                                   "--apix", v], "--apix must be a finite")
        for v in ("-1", "nan")
    ],
    ("export-voltage", lambda s, r, t: ["export-star", str(r), "-o", str(t / "x.star"),
                                        "--voltage", "-300"], "--voltage must be a finite"),
    ("optics-apix", lambda s, r, t: _negative_optics_apix(s, t), "rlnImagePixelSize is -1.5"),
    ("mrc-nx-info", lambda s, r, t: _negative_width(s, t), "neg.mrcs"),
    ("mrc-nx-fit", lambda s, r, t: _negative_width(s, t, "fit"), "neg.mrcs"),
    ("encode-batch-0", lambda s, r, t: ["encode", str(r), str(s), "-o", str(t / "e.csv"),
                                        "-b", "0"], "--batch-size"),
    ("simulate-huge", lambda s, r, t: ["simulate", str(t / "sim"), "-n", "1000000", "--size",
                                       "100000"], "GiB of memory"),
]  # fmt: skip


@pytest.mark.parametrize("case", BAD_VALUES, ids=[c[0] for c in BAD_VALUES])
def test_bad_values_get_one_line_and_write_nothing(case, run, tiny_stack, tmp_path):
    """Non-physical values, headers that lie and sizes beyond memory: one line, no traceback,
    nothing written (issue 38)."""
    _, make, words = case
    args = make(tiny_stack, run, tmp_path)
    r = runner.invoke(app, args)
    said = " ".join(r.output.split())
    assert r.exit_code in (1, 2) and words in said and "Traceback" not in said, said
    assert not (tmp_path / "r" / "particles.star").exists() and not (tmp_path / "x.star").exists()
    assert not (tmp_path / "sim").exists() and not (tmp_path / "e.csv").exists()


def test_a_montage_beyond_memory_is_refused(run, monkeypatch):
    import emvae.safety

    monkeypatch.setattr(emvae.safety, "available_memory", lambda: 100 * 2**20)
    r = runner.invoke(app, ["montage", str(run), "--grid", "100000"])
    said = " ".join(r.output.split())
    assert r.exit_code == 1 and "montage --grid 100000 needs about" in said, said
    assert not (run / "montage").exists()


def test_resume_without_epochs_continues_to_the_stored_number(run, tiny_stack):
    """--resume without -n trained an 8-epoch run to the default 50 (issue 38)."""
    r = runner.invoke(app, ["fit", str(tiny_stack), "-o", str(run), "--resume", "-q"])
    assert r.exit_code == 0, r.output
    assert read_table(run / "particles.csv").shape[0] == 60
    assert pd.read_csv(run / "metrics.csv")["epoch"].tolist() == [1, 2]


def _clusters_stale(run, tiny_stack, tmp_path):
    args = ["fit", str(tiny_stack), "-o", str(run), "--resume", "-n", "3", "-q"]
    assert runner.invoke(app, args).exit_code == 0
    return "stale"


def _clusters_of_another_run(run, tiny_stack, tmp_path):
    other = tmp_path / "other"
    args = ["fit", str(tiny_stack), "-o", str(other), "--seed", "5", *SMALL]
    assert runner.invoke(app, args).exit_code == 0
    assert runner.invoke(app, ["analyze", str(other), "-k", "2"]).exit_code == 0
    for name in ("clusters.csv", "analyze.json", MANIFEST):  # the whole folder copied in
        (run / "analyze" / name).write_bytes((other / "analyze" / name).read_bytes())
    return "another run"


def _clusters_edited(run, tiny_stack, tmp_path):
    path = run / "analyze" / "clusters.csv"
    path.write_text(path.read_text().replace(",1,", ",xyz,", 1))
    return "not the table emvae analyze wrote"


def _clusters_not_numbers(run, tiny_stack, tmp_path):
    path = run / "analyze" / "clusters.csv"
    table = pd.read_csv(path).astype({"cluster": object})
    table.loc[0, "cluster"] = "xyz"
    table.to_csv(path, index=False)
    record_outputs(run / "analyze", ["clusters.csv"])  # as if emvae had written it
    return "cluster 'xyz' is not a cluster number"


@pytest.mark.parametrize(
    "damage",
    [_clusters_stale, _clusters_of_another_run, _clusters_edited, _clusters_not_numbers],
    ids=lambda f: f.__name__.strip("_"),
)
def test_select_refuses_clusters_that_do_not_describe_the_run(run, tiny_stack, tmp_path, damage):
    """analyze, then fit --resume -n 12, then select --cluster 1 used the stale clusters;
    another run's clusters.csv was accepted; 'xyz' as a cluster was a traceback (issue 38)."""
    assert runner.invoke(app, ["analyze", str(run), "-k", "2"]).exit_code == 0
    words = damage(run, tiny_stack, tmp_path)
    r = runner.invoke(app, ["select", str(run), "-o", str(tmp_path / "s"), "--cluster", "1"])
    said = " ".join(r.output.split())
    assert r.exit_code == 1 and words in said and "Traceback" not in said, said
    assert not list(tmp_path.glob("s.*"))


def test_a_fractional_image_index_is_refused(tiny_stack, tmp_path):
    star = tmp_path / "frac.star"
    starfile.write(pd.DataFrame({"rlnImageName": [f"7.5@{tiny_stack}", f"2@{tiny_stack}"]}), star)
    r = runner.invoke(app, ["info", str(star)])
    assert r.exit_code == 1 and "7.5@" in r.output and "row 1" in r.output


@pytest.mark.parametrize("option", ["--steps", "--grid", "--samples", "--pairs"])
def test_montage_counts_must_be_positive(run, option):
    r = runner.invoke(app, ["montage", str(run), option, "0"])
    assert r.exit_code == 2 and option in r.output


def test_export_star_refuses_another_stars_rows(run, tiny_stack, tmp_path):
    other = tmp_path / "other.star"
    names = [f"{k}@elsewhere.mrcs" for k in range(1, 61)]
    starfile.write(pd.DataFrame({"rlnImageName": names, "rlnDefocusU": 1e4}), other)
    r = runner.invoke(app, ["export-star", str(run), "--input", str(other), "-o", "x.star"])
    assert r.exit_code == 1 and "not the one the poses came from" in r.output
    assert not os.path.exists("x.star")


def test_z_delay_longer_than_the_run_is_reported(tiny_stack, tmp_path):
    r = runner.invoke(
        app, ["fit", str(tiny_stack), "-o", str(tmp_path / "r"), "--z-delay", "5", *SMALL]
    )
    assert r.exit_code == 0 and "latents are untrained" in r.output


# ---------------------------------------------------------------------------------------------
# 5. Metadata: every optics group kept, each particle's origin in its own group's pixels.


def test_optics_groups_with_different_pixel_sizes_are_kept(tiny_stack, tmp_path):
    from emvae.io import star_export as sx

    optics = pd.DataFrame(
        {
            "rlnOpticsGroup": [1, 2],
            "rlnOpticsGroupName": ["a", "b"],
            "rlnVoltage": [200.0, 300.0],
            "rlnSphericalAberration": [2.0, 2.7],
            "rlnAmplitudeContrast": [0.07, 0.1],
            "rlnImagePixelSize": [1.0, 2.0],
            "rlnImageSize": [16, 16],
            "rlnImageDimensionality": [2, 2],
        }
    )
    group = np.repeat([1, 2], 30)
    particles = pd.DataFrame(
        {"rlnImageName": [f"{k}@{tiny_stack}" for k in range(1, 61)], "rlnOpticsGroup": group}
    )
    star = tmp_path / "two_groups.star"
    starfile.write({"optics": optics, "particles": particles}, star)
    r = runner.invoke(app, ["fit", str(star), "-o", str(tmp_path / "run"), *SMALL])
    assert r.exit_code == 0, r.output
    got = starfile.read(tmp_path / "run" / "particles.star", always_dict=True)
    assert got["optics"]["rlnVoltage"].tolist() == [200.0, 300.0]
    assert got["optics"]["rlnImagePixelSize"].tolist() == [1.0, 2.0]
    table = read_table(tmp_path / "run" / "particles.csv")
    origin = sx.relion_origin(
        table["theta_deg"].to_numpy(), table[["shift_x_px", "shift_y_px"]].to_numpy(), 16
    )
    apix = np.where(group == 1, 1.0, 2.0)
    assert np.allclose(got["particles"]["rlnOriginXAngst"], origin[:, 0] * apix, atol=1e-5)
    assert np.allclose(got["particles"]["rlnOriginYAngst"], origin[:, 1] * apix, atol=1e-5)
    assert got["particles"]["rlnOpticsGroup"].tolist() == group.tolist()


def test_resume_refuses_another_stack_of_the_same_shape(run, tmp_path):
    from emvae.simulate import write_simulation

    other = write_simulation(tmp_path / "other", n=60, size=16, snr=5.0, seed=11, apix=1.5)
    before = _digest(run)
    r = runner.invoke(app, ["fit", str(other), "-o", str(run), "--resume", "-n", "3", "-q"])
    assert r.exit_code == 1 and "is not the stack the run being resumed" in r.output
    assert _digest(run) == before


def _reference(run: Path, tmp_path: Path, theta) -> Path:
    table = read_table(run / "particles.csv")
    ref = pd.DataFrame({"image": table["image"], "theta_deg": theta(table["theta_deg"])})
    ref.to_csv(tmp_path / "ref.csv", index=False)
    return tmp_path / "ref.csv"


def test_a_nan_in_the_reference_drops_one_row_not_every_score(run, tmp_path):
    def one_nan(theta):
        theta = theta.copy()
        theta.iloc[3] = np.nan
        return theta

    ref = _reference(run, tmp_path, one_nan)
    r = runner.invoke(app, ["report", str(run), "--reference", str(ref)])
    assert r.exit_code == 0, r.output
    assert "1 rows without a finite pose left out" in r.output
    assert "circular correlation 1.000" in r.output and "59 particles matched" in r.output


def test_a_reference_naming_some_of_the_particles_needs_partial(run, tmp_path):
    """A reference matching 36 of the 60 particles was compared without a word (issue 38)."""
    ref = _reference(run, tmp_path, lambda t: t)
    pd.read_csv(ref).iloc[:36].to_csv(ref, index=False)
    r = runner.invoke(app, ["report", str(run), "--reference", str(ref)])
    said = " ".join(r.output.split())
    assert r.exit_code == 1 and "names 36 of the run's 60 particles" in said, said
    assert "--partial" in said
    r = runner.invoke(app, ["report", str(run), "--reference", str(ref), "--partial"])
    said = " ".join(r.output.split())
    assert r.exit_code == 0 and "36 particles matched" in said and "names 36 of" in said, said


def test_a_refused_reference_leaves_no_report_behind(run, tmp_path):
    """A report refused for its reference wrote figures first, so the retry with --partial
    into the same folder needed --force."""
    ref = _reference(run, tmp_path, lambda t: t)
    pd.read_csv(ref).iloc[:36].to_csv(ref, index=False)
    out = tmp_path / "rep"
    r = runner.invoke(app, ["report", str(run), "--reference", str(ref), "-o", str(out)])
    assert r.exit_code == 1 and "names 36 of" in " ".join(r.output.split())
    assert not out.exists() or not any(out.iterdir())
    args = ["report", str(run), "--reference", str(ref), "--partial", "-o", str(out)]
    r = runner.invoke(app, args)
    assert r.exit_code == 0 and "36 particles matched" in " ".join(r.output.split()), r.output
    assert (out / "report.json").is_file()


def _cut_table(run, tmp_path):
    text = (run / "particles.csv").read_text()
    cut = tmp_path / "cut.csv"
    cut.write_text(text[: len(text) // 2])  # ends in the middle of a row
    return ["export-star", str(cut), "-o", str(tmp_path / "x.star"), "--box", "16"], cut


def _cut_metrics(run, tmp_path):
    text = (run / "metrics.csv").read_text()
    (run / "metrics.csv").write_text(text[: len(text) - 7])
    return ["report", str(run)], run / "metrics.csv"


@pytest.mark.parametrize("cut", [_cut_table, _cut_metrics], ids=lambda f: f.__name__.strip("_"))
def test_a_truncated_table_is_named_as_such(run, tmp_path, cut):
    """export-star of a cut table wrote <NA> fields; a cut metrics.csv was reported without a
    word (issue 38)."""
    args, path = cut(run, tmp_path)
    r = runner.invoke(app, args)
    said = " ".join(r.output.split())
    assert r.exit_code == 1 and f"{path}: the file is truncated at line" in said, said
    assert not (tmp_path / "x.star").exists()


def test_non_numeric_reference_angles_get_one_line(run, tmp_path):
    ref = _reference(run, tmp_path, lambda t: t.astype(str).where(t.index != 2, "ninety"))
    r = runner.invoke(app, ["report", str(run), "--reference", str(ref)])
    assert r.exit_code == 1 and "row 3: theta_deg is 'ninety'" in r.output


def test_datadir_never_lets_a_star_reach_outside_it(tiny_stack, tmp_path):
    datadir = tmp_path / "dd"
    datadir.mkdir()
    star = datadir / "escape.star"
    rel = os.path.relpath(tiny_stack, datadir)  # ../tiny/particles.mrcs: outside datadir
    starfile.write(pd.DataFrame({"rlnImageName": [f"{k}@{rel}" for k in (1, 2)]}), star)
    assert runner.invoke(app, ["info", str(star)]).exit_code == 0  # RELION's relative paths
    r = runner.invoke(app, ["info", str(star), "--datadir", str(datadir)])
    assert r.exit_code == 1 and "not found" in r.output and str(datadir) in r.output


@pytest.mark.parametrize("entry", ["../outside/secret.mrcs", "ABS"], ids=["dotdot", "absolute"])
def test_datadir_never_lets_a_txt_list_reach_outside_it(tiny_stack, tmp_path, entry):
    """A .txt list of stacks is confined to --datadir like STAR and .cs (issue 38)."""
    outside = tmp_path / "outside"
    outside.mkdir()
    secret = outside / "secret.mrcs"
    secret.write_bytes(tiny_stack.read_bytes())
    datadir = tmp_path / "dd"
    datadir.mkdir()
    listing = datadir / "list.txt"
    listing.write_text("# stacks\n\n" + (str(secret) if entry == "ABS" else entry) + "\n")
    r = runner.invoke(app, ["info", str(listing), "--datadir", str(datadir)])
    assert r.exit_code == 1 and "line 3" in r.output and "not found" in r.output, r.output
    assert "Traceback" not in r.output


def _star_without_indices(stack: Path, folder: Path) -> tuple[Path, str]:
    star = folder / "whole.star"
    starfile.write(pd.DataFrame({"rlnImageName": [str(stack)] * 60}), star)
    return star, "has no N@ but"


def _star_with_two_name_columns(stack: Path, folder: Path) -> tuple[Path, str]:
    star = folder / "twice.star"
    rows = "".join(f"{k}@{stack} {k}@{stack}\n" for k in (1, 2))
    star.write_text(f"data_\nloop_\n_rlnImageName #1\n_rlnImageName #2\n{rows}")
    return star, "rlnImageName appears more than once"


def _star_cut_mid_row(stack: Path, folder: Path) -> tuple[Path, str]:
    star = folder / "cut.star"
    optics = pd.DataFrame({"rlnOpticsGroup": [1], "rlnImagePixelSize": [1.0]})
    particles = pd.DataFrame(
        {"rlnImageName": [f"{k}@{stack}" for k in (1, 2, 3)], "rlnDefocusU": 1e4}
    )
    particles["rlnOpticsGroup"] = 1
    starfile.write({"optics": optics, "particles": particles}, star)
    text = star.read_text().rstrip()
    star.write_text(text[: max(text.rindex(" "), text.rindex("\t"))] + "\n")  # cut its group
    return star, f"truncated at line {len(star.read_text().splitlines())}"


@pytest.mark.parametrize(
    "make",
    [_star_without_indices, _star_with_two_name_columns, _star_cut_mid_row],
    ids=lambda f: f.__name__.strip("_"),
)
def test_a_star_file_that_misleads_gets_one_line(tiny_stack, tmp_path, make):
    """Rows naming a whole stack (read as 60 copies of image 1), a doubled column (a
    traceback) and a file cut mid-row ("optics groups [nan]") each get one line (issue 38)."""
    star, words = make(tiny_stack, tmp_path)
    r = runner.invoke(app, ["info", str(star)])
    said = " ".join(r.output.split())
    assert r.exit_code == 1 and words in said and str(star) in said, said
    assert "Traceback" not in said


def test_datadir_comes_before_an_absolute_path_and_info_says_which_file_was_read(
    tiny_stack, tmp_path
):
    datadir = tmp_path / "dd"
    datadir.mkdir()
    (datadir / tiny_stack.name).write_bytes(tiny_stack.read_bytes())
    star = tmp_path / "abs.star"
    starfile.write(pd.DataFrame({"rlnImageName": [f"{k}@{tiny_stack}" for k in (1, 2)]}), star)
    r = runner.invoke(app, ["info", str(star), "--datadir", str(datadir)])
    assert r.exit_code == 0 and f"stacks read:      {datadir / tiny_stack.name}" in r.output, (
        r.output
    )


@pytest.mark.parametrize("other", ["L", "RGB"])
def test_a_16_bit_picture_among_8_bit_ones_keeps_its_values(tmp_path, other):
    from PIL import Image

    from emvae.io import read_stack

    folder = tmp_path / "pics"
    folder.mkdir()
    Image.fromarray(np.full((8, 8), 30000, np.uint16)).save(folder / "a16.png")
    Image.new(other, (8, 8), 100 if other == "L" else (100, 100, 100)).save(folder / "b8.png")
    images = np.asarray(read_stack(str(folder)).images[0:2])
    assert np.allclose(images[0], 30000 / 65535, atol=1e-6)  # not saturated to 1
    assert np.allclose(images[1], 100 / 255, atol=1e-6)


def test_a_huge_picture_gets_a_limit_not_a_traceback(tmp_path, monkeypatch):
    from PIL import Image

    from emvae.io import pictures

    monkeypatch.setattr(pictures, "MAX_PIXELS", 1000)
    Image.new("L", (100, 100)).save(tmp_path / "big.png")
    r = runner.invoke(app, ["info", str(tmp_path / "big.png")])
    assert r.exit_code == 1 and "100x100" in r.output and "EMVAE_MAX_PICTURE_PIXELS" in r.output


def _corrupt_config(run):
    (run / "config.json").write_text("{not json")
    return run / "config.json", "not a readable emvae config.json"


def _empty_metrics(run):
    (run / "metrics.csv").write_bytes(b"")
    return run / "metrics.csv", "not a readable metrics table"


def _binary_metrics(run):
    (run / "metrics.csv").write_bytes(bytes(range(256)) * 4)
    return run / "metrics.csv", "not a readable metrics table"


def _mixed_runs(run):
    table = read_table(run / "particles.csv").iloc[:40]
    table.to_csv(run / "particles.csv", index=False)
    (run / "particles.h5").unlink()
    return run / "particles.csv", "mixes outputs of two runs"


DAMAGE = [
    (command, damage)
    for damage in (_corrupt_config, _empty_metrics, _binary_metrics, _mixed_runs)
    for command in ("report", "export-star", "montage")
    if command == "report" or "metrics" not in damage.__name__  # only report reads metrics
]


@pytest.mark.parametrize(
    ("command", "damage"), DAMAGE, ids=[f"{c}-{d.__name__.strip('_')}" for c, d in DAMAGE]
)
def test_a_damaged_run_folder_gets_one_line(run, tmp_path, command, damage):
    path, words = damage(run)
    args = ["-o", str(tmp_path / "x.star")] if command == "export-star" else []
    r = runner.invoke(app, [command, str(run), *args])
    assert r.exit_code == 1, r.output
    assert str(path) in r.output and words in r.output and "Traceback" not in r.output


def test_export_star_names_the_missing_columns(tmp_path):
    pd.DataFrame({"image": ["1@a.mrcs"], "shift_x_px": [0.0]}).to_csv(tmp_path / "t.csv")
    args = ["export-star", str(tmp_path / "t.csv"), "-o", str(tmp_path / "t.star"), "--box", "8"]
    r = runner.invoke(app, [*args, "--apix", "1"])
    assert r.exit_code == 1 and "theta_deg" in r.output and not (tmp_path / "t.star").exists()


@pytest.mark.parametrize("name", [b"bad\xff.mrcs", b"line\nbreak.mrcs"], ids=["latin1", "newline"])
def test_unwritable_file_names_are_refused_before_training(tiny_stack, tmp_path, name):
    odd = Path(os.fsdecode(bytes(tmp_path) + b"/" + name))
    odd.write_bytes(tiny_stack.read_bytes())
    r = runner.invoke(app, ["fit", str(odd), "-o", str(tmp_path / "run"), *SMALL])
    assert r.exit_code == 1 and "rename it" in r.output
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_a_fit_that_cannot_fit_on_the_disk_does_not_start(tiny_stack, tmp_path, monkeypatch):
    import shutil

    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage._replace(free=10_000))
    r = runner.invoke(app, ["fit", str(tiny_stack), "-o", str(tmp_path / "run"), *SMALL])
    assert r.exit_code == 1 and "MiB free" in r.output
    assert not (tmp_path / "run" / "checkpoints" / "last.pt").exists()


def _bad_json(f):
    f.attrs["preprocess"] = "{bad"


def _no_names(f):
    del f["names"]


def _few_names(f):
    names = f["names"][()][:10]
    del f["names"]
    f.create_dataset("names", data=names)


@pytest.mark.parametrize("damage", [_bad_json, _no_names, _few_names], ids=lambda d: d.__name__)
def test_a_damaged_cache_gets_one_line(tiny_stack, tmp_path, damage):
    import h5py

    cache = tmp_path / "cache.h5"
    assert (
        runner.invoke(app, ["preprocess", str(tiny_stack), "-o", str(cache), "-q"]).exit_code == 0
    )
    with h5py.File(cache, "a") as f:
        damage(f)
    r = runner.invoke(app, ["info", str(cache)])
    assert r.exit_code == 1 and "a damaged emvae cache" in r.output and str(cache) in r.output


def test_a_table_from_another_run_of_the_same_size_is_refused(run, tiny_stack, tmp_path):
    other = tmp_path / "other"
    r = runner.invoke(app, ["fit", str(tiny_stack), "-o", str(other), "--seed", "5", *SMALL])
    assert r.exit_code == 0, r.output
    (run / "particles.h5").write_bytes((other / "particles.h5").read_bytes())
    for command in (["report", str(run)], ["export-star", str(run), "-o", str(tmp_path / "x")]):
        r = runner.invoke(app, command)
        assert r.exit_code == 1 and "mixes outputs of two runs" in r.output, r.output


# ---------------------------------------------------------------------------------------------
# Files whose headers or values lie.


def _mrc(path: Path, images: np.ndarray, **header) -> Path:
    import mrcfile

    with mrcfile.new(path, overwrite=True) as m:
        m.set_data(images.astype(np.float32))
        if images.ndim == 3 and "volume" not in header:
            m.set_image_stack()
    with mrcfile.open(path, "r+", permissive=True) as m:
        for k, v in header.items():
            if k != "volume":
                setattr(m.header, k, v)
    return path


def test_a_header_claiming_millions_of_images_allocates_nothing_for_them(tmp_path):
    import tracemalloc

    from emvae.io import read_stack
    from emvae.particles import Particles

    n = 10_000_000  # 4x4 float32 images: a 640 MB sparse file that holds nothing
    p = _mrc(tmp_path / "sparse.mrcs", np.zeros((1, 4, 4)), nz=n, mz=n)
    os.truncate(p, 1024 + n * 64)
    tracemalloc.start()
    stack = read_stack(p)
    lines = dict(Particles.of(stack).describe())
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert lines["images"] == f"{n:,}" and len(stack.names) == n
    assert stack.names[n - 1] == f"{n}@{p}" and stack.subset(np.array([2])).names == [f"3@{p}"]
    assert peak < 20e6, f"{peak / 1e6:.0f} MB allocated for a header's claim"  # names: ~1 GB


def test_a_volume_is_read_as_slices_with_a_note(tmp_path):
    p = _mrc(tmp_path / "map.mrc", np.random.default_rng(0).random((16, 16, 16)), volume=True)
    r = runner.invoke(app, ["info", str(p)])
    assert r.exit_code == 0 and "3-D volume (16 x 16 x 16" in r.output, r.output


def test_a_negative_width_in_an_mrc_header_gets_one_line(tmp_path):
    p = _mrc(tmp_path / "neg.mrcs", np.zeros((3, 8, 8)), nx=-8)
    r = runner.invoke(app, ["info", str(p)])
    assert r.exit_code == 1 and str(p) in r.output and "Traceback" not in r.output


def test_one_image_of_absurd_values_is_refused_by_name(tiny_stack, tmp_path):
    import mrcfile

    images = mrcfile.read(tiny_stack).copy()
    images[5] = 3e38
    p = tmp_path / "damaged.mrcs"
    write_mrc(p, images)
    r = runner.invoke(app, ["fit", str(p), "-o", str(tmp_path / "run"), *SMALL])
    said = " ".join(r.output.split())
    assert r.exit_code == 1 and "image 6 (index 5) holds values" in said and "--ind" in said
    assert not (tmp_path / "run" / "checkpoints" / "last.pt").exists()
    # the fix it names works: --ind without index 5 (issue 38: it named the 1-based number)
    keep = _write_ind(tmp_path, [k for k in range(60) if k != 5])
    r = runner.invoke(app, ["fit", str(p), "-o", str(tmp_path / "run"), "--ind", str(keep), *SMALL])
    assert r.exit_code == 0, r.output


def test_a_cs_file_with_a_path_that_is_not_utf8_gets_one_line(tmp_path):
    table = np.zeros(2, dtype=[("uid", "<u8"), ("blob/path", "S20"), ("blob/idx", "<u4")])
    table["blob/path"] = [b"J1/ok.mrcs", b"J1/bad\xff.mrcs"]
    with open(tmp_path / "p.cs", "wb") as f:
        np.save(f, table)
    r = runner.invoke(app, ["info", str(tmp_path / "p.cs")])
    assert r.exit_code == 1 and "row 2" in r.output and "not UTF-8" in r.output, r.output


@pytest.mark.parametrize("values", [np.arange(2_000_000), ["1", "2"], [0.5, 1.0]])
def test_a_pickled_index_list_must_be_plain_integers_within_the_stack(tiny_stack, tmp_path, values):
    import pickle

    ind = tmp_path / "ind.pkl"
    ind.write_bytes(pickle.dumps(np.asarray(values)))
    r = runner.invoke(app, ["info", str(tiny_stack), "--ind", str(ind)])
    assert r.exit_code == 1 and str(ind) in r.output and "Traceback" not in r.output, r.output


def test_force_over_a_symlinked_checkpoints_folder_is_refused(run, tiny_stack, tmp_path):
    import shutil

    elsewhere = tmp_path / "scratch"
    elsewhere.mkdir()
    (elsewhere / "precious.pt").write_bytes(b"months of work")
    shutil.rmtree(run / "checkpoints")
    (run / "checkpoints").symlink_to(elsewhere, target_is_directory=True)
    before = _digest(run)
    r = runner.invoke(app, ["fit", str(tiny_stack), "-o", str(run), "--force", *SMALL])
    assert r.exit_code == 1 and "checkpoints is a link" in r.output, r.output
    assert [p.name for p in elsewhere.iterdir()] == ["precious.pt"]
    assert _digest(run) == before


def test_a_checkpoint_from_another_run_is_refused(run, tiny_stack, tmp_path):
    other = tmp_path / "other"
    r = runner.invoke(app, ["fit", str(tiny_stack), "-o", str(other), "--seed", "5", *SMALL])
    assert r.exit_code == 0, r.output
    last = run / "checkpoints" / "last.pt"
    last.write_bytes((other / "checkpoints" / "last.pt").read_bytes())
    for command in (["montage", str(run)], ["fit", str(tiny_stack), "-o", str(run), "--resume"]):
        r = runner.invoke(app, command)
        assert r.exit_code == 1 and "mixes outputs of two runs" in r.output, (command, r.output)


# Every command whose output folder cannot be written (here: a path under a regular file, which
# even root cannot create) stops with one line naming it, before its work.
UNWRITABLE = [
    ("report", lambda run, stack, bad: ["report", str(run), "-o", str(bad / "rep")]),
    ("montage", lambda run, stack, bad: ["montage", str(run), "-o", str(bad / "m")]),
    ("align", lambda run, stack, bad: ["align", str(run), "-o", str(bad / "a.mrcs")]),
    ("export-star", lambda run, stack, bad: ["export-star", str(run), "-o", str(bad / "x.star")]),
    ("preprocess", lambda run, stack, bad: ["preprocess", str(stack), "-o", str(bad / "c.h5")]),
    ("encode", lambda run, stack, bad: ["encode", str(run), str(stack), "-o", str(bad / "e.csv")]),
    ("simulate", lambda run, stack, bad: ["simulate", str(bad / "sim"), "-n", "10"]),
]


@pytest.mark.parametrize("make", [m for _, m in UNWRITABLE], ids=[c for c, _ in UNWRITABLE])
def test_an_unwritable_output_gets_one_line(run, tiny_stack, tmp_path, make):
    bad = tmp_path / "a_file"
    bad.write_text("not a folder")
    r = runner.invoke(app, make(run, tiny_stack, bad))
    assert r.exit_code == 1, r.output
    assert str(bad) in r.output and "Traceback" not in r.output, r.output
    assert bad.read_text() == "not a folder"


# ---------------------------------------------------------------------------------------------
# Code from user input: a --query condition never reaches Python (issue 38).

HOSTILE_QUERIES = [
    "@os.system('touch pwned') == 0",
    "z1 > @pd.io.common.os.system('id > x')",
    "@frame.to_csv('x.csv')",
    "@np.save('x',1)",
    "@pd.read_csv('/etc/passwd')",
    "@frame.__class__.__init__.__globals__['os']",
    "z1.__class__.__init__.__globals__ == 1",
    "__import__('os').system('touch pwned') == 0",
    "open('x.csv', 'w') == 1",
    "(lambda: 1)() == 1",
    "z1[0] > 1",
    "[z for z in z1] == 1",
    "z1.to_csv('x.csv') == 1",
    "f'{z1}' == 'a'",
    "abs(z1, key=print) > 1",
    "image * 10**12 == 'a'",
    "'a' * 10**12 == image",
    "(((2.0 ** 64) ** 64) ** 64) ** 64 > 1",
    "z1 > 0 and " * 120 + "z1 > 0",
]


@pytest.mark.parametrize("query", HOSTILE_QUERIES)
def test_a_condition_is_never_evaluated_as_python(query, monkeypatch, tmp_path):
    """Each hostile condition is refused with one ConfigError line, calls nothing and writes
    nothing; pandas' DataFrame.eval (which resolves @names in the caller's scope) is never
    used."""
    from emvae.errors import ConfigError
    from emvae.query import condition_mask

    monkeypatch.chdir(tmp_path)
    called = []
    monkeypatch.setattr(os, "system", lambda *a: called.append(a) or 0)
    monkeypatch.setattr(pd.DataFrame, "eval", lambda *a, **k: called.append(a))
    frame = pd.DataFrame({"z1": [0.5, -0.5], "image": ["1@a.mrcs", "2@a.mrcs"]})
    with pytest.raises(ConfigError) as e:
        condition_mask(frame, query)
    assert str(e.value).startswith("--query ") and "\n" not in str(e.value)
    assert called == [] and list(tmp_path.iterdir()) == []


def test_select_refuses_hostile_queries_and_creates_nothing(run, tmp_path, monkeypatch):
    """The command as the hostile user ran it: one line each, no output, no file anywhere."""
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    before = _digest(tmp_path)
    for query in HOSTILE_QUERIES[:6]:
        r = runner.invoke(app, ["select", str(run), "-o", "s", "--query", query])
        assert r.exit_code == 1, (query, r.output)
        assert len(r.output.strip().splitlines()) == 1 and "Traceback" not in r.output, r.output
        assert "python variables" in r.output.lower(), r.output
    assert list(work.iterdir()) == [] and _digest(tmp_path) == before


@pytest.mark.parametrize(
    ("query", "rows"),
    [
        ("z1 > 0", [0, 2]),
        ("z1 > 0 and z2 < 3", [0]),
        ("z1 > 0 & z2 < 3", [0]),  # pandas' & with pandas' precedence
        ("z1 > 0 | z2 == 4", [0, 2, 3]),
        ("not z1 > 0", [1, 3]),
        ("~(z1 > 0)", [1, 3]),
        ("-1 < z1 < 1", [0, 1]),
        ("cluster in [1, 3]", [0, 2, 3]),
        ("cluster not in (1,)", [1, 2]),
        ("abs(z1) < 1", [0, 1]),
        ("sqrt(z2) >= 2", [3]),
        ("z2 % 2 == 0 and z2 ** 2 > 4", [3]),
        ("split == 'test'", [1]),
        ("`odd name` >= 3", [2, 3]),
        ("z1 == z1", [0, 1, 2]),  # a missing value fails every comparison
        ("isnan(z1)", [3]),
    ],
)
def test_conditions_select_what_they_say(query, rows):
    from emvae.query import condition_mask

    frame = pd.DataFrame(
        {
            "z1": [0.1, -0.6, 2.0, np.nan],
            "z2": [1, 2, 3, 4],
            "cluster": [1, 2, 3, 1],
            "split": ["train", "test", "train", "train"],
            "odd name": [1, 2, 3, 4],
        }
    )
    assert np.flatnonzero(condition_mask(frame, query)).tolist() == rows


def test_messages_to_a_pipe_are_never_hard_wrapped(tiny_stack, tmp_path):
    """A long path in a message stays on one line whatever the folder depth or COLUMNS (the
    CLI's output is not a terminal here): rich used to cut it at 80 columns, so file names in
    users' logs were broken and a test's expected text could straddle a line break."""
    deep = tmp_path.joinpath(*(["a_rather_long_folder_name"] * 8))
    deep.mkdir(parents=True)
    out = deep / "cache.mrcs"
    r = runner.invoke(app, ["preprocess", str(tiny_stack), "-o", str(out), "-q"])
    assert r.exit_code == 0, r.output
    assert f"wrote {out} (" in r.output, r.output
    missing = deep / "no_such_particles.mrcs"
    r = runner.invoke(app, ["info", str(missing)], env={"COLUMNS": "40"})
    assert r.exit_code == 1, r.output
    assert len(r.output.strip().splitlines()) == 1 and str(missing) in r.output, r.output


def test_refuse_existing_names_every_existing_output_and_the_one_hint(tmp_path):
    a, b, c = tmp_path / "a.txt", tmp_path / "b.npy", tmp_path / "c.star"
    a.write_text("x")
    b.symlink_to(tmp_path / "nowhere")  # a dangling link is refused too
    refuse_existing(c)
    refuse_existing([a, b, c], force=True)
    with pytest.raises(OutputExistsError) as e:
        refuse_existing([a, b, c])
    assert str(e.value) == f"{a}, {b}: exists; use --force to overwrite"
