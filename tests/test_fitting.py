"""``emvae fit`` as one library call: :func:`emvae.fitting.fit_from_options` (the plan, its
notes, the fit, the summary and run.log)."""

from __future__ import annotations

import json
import types

import mrcfile
import numpy as np
import pandas as pd

from emvae import fitting
from emvae.fitting import fit_from_options
from emvae.runlog import LOG

#: conftest's SMALL, as the options the command line hands on (field names)
OPTIONS = {
    "zdim": 1, "gen_hidden": 16, "enc_hidden": 16, "epochs": 2, "batch_size": 20, "lr": 1e-3,
    "device": "cpu",
}  # fmt: skip


def _logged(out):
    """run.log's lines without their timestamps."""
    return [line[21:] for line in (out / LOG).read_text().splitlines()]


def test_a_fit_and_its_resume_end_with_the_lines_they_log(tiny_stack, tmp_path):
    """The returned lines are the last of run.log; --resume keeps the stored settings and
    trains to the new number of epochs, logging after the first run's lines."""
    out, said = tmp_path / "run", []
    summary = fit_from_options(
        [str(tiny_stack)], out, {**OPTIONS, "seed": 5}, command="emvae fit tiny", progress=False,
        say=said.append,
    )  # fmt: skip
    assert summary is not None and said == []
    warnings, wrote = summary
    assert wrote.startswith(f"wrote {out / 'particles.csv'} (60 particles), ")
    assert wrote.endswith(f"{out / 'checkpoints'}, {out / LOG}")
    assert _logged(out)[-len(warnings) - 1 :] == [*warnings, wrote]
    config = json.loads((out / "config.json").read_text())
    assert config["command"] == "emvae fit tiny" and config["train"]["seed"] == 5

    again = fit_from_options(
        [str(tiny_stack)], out, {"epochs": 3, "device": "cpu"}, resume=True, progress=False
    )
    assert again is not None and again[1] == wrote
    assert len(pd.read_csv(out / "metrics.csv")) == 3
    config = json.loads((out / "config.json").read_text())
    assert config["train"]["epochs"] == 3 and config["train"]["seed"] == 5  # stored
    assert config["model"]["zdim"] == 1 and config["model"]["gen_hidden"] == 16
    assert _logged(out).count(wrote) == 2


def test_notes_before_training_and_nothing_after_on_other_ranks(tiny_stack, tmp_path, monkeypatch):
    """The input's notes reach ``say`` before training starts; a process whose table is empty
    (not rank 0 of a distributed job) returns None and logs no summary."""
    with mrcfile.open(tiny_stack) as m:
        cube = np.array(m.data[:16])
    vol = tmp_path / "vol.mrc"
    with mrcfile.new(vol) as m:
        m.set_data(cube)  # a 3-D array: space group 1, a volume
    events: list[str] = []

    def start_fit(plan, progress):
        events.append(f"start_fit ({len(plan.particles)} images)")
        return types.SimpleNamespace(table=pd.DataFrame())

    monkeypatch.setattr(fitting, "start_fit", start_fit)
    out = tmp_path / "run"
    assert fit_from_options([str(vol)], out, OPTIONS, say=events.append) is None
    assert events == [
        f"note: {vol}: the header marks a 3-D volume (16 x 16 x 16, space group 1..230); "
        "its 16 z-sections are read as 16 images",
        "start_fit (16 images)",
    ]
    assert not (out / LOG).exists()


def test_a_resume_reads_the_last_checkpoint_once(tiny_stack, tmp_path, monkeypatch):
    """--resume reads checkpoints/last.pt once (issue 36: the command line read it, then
    train.fit again): the plan reads it and hands it on."""
    from emvae import checkpoint

    out = tmp_path / "run"
    fit_from_options([str(tiny_stack)], out, {**OPTIONS, "epochs": 1}, progress=False)
    read, load = [], checkpoint.load_checkpoint
    monkeypatch.setattr(checkpoint, "load_checkpoint", lambda p: read.append(p) or load(p))
    fit_from_options(
        [str(tiny_stack)], out, {"epochs": 2, "device": "cpu"}, resume=True, progress=False
    )
    assert [p.name for p in read].count("last.pt") == 1
