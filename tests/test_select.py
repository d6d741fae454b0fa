"""``emvae select``: subsets of a run's particles map back to exactly the input rows chosen, in
the input's own format (RELION 3.1 / 3.0 STAR, cryoSPARC .cs) and as --ind lists."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import starfile
from conftest import SMALL, optics_table, runner, stamp_analysis
from emvae_cli.main import app

from emvae.errors import ConfigError, InputError
from emvae.io import open_stack, read_indices, read_table
from emvae.select import output_paths, select_rows, selected_input_rows

N = 60  # tiny_stack's images


def _fit(inputs: list[str], out: Path, *extra: str) -> pd.DataFrame:
    r = runner.invoke(app, ["fit", *inputs, "-o", str(out), *extra, *SMALL])
    assert r.exit_code == 0, r.output
    return read_table(out / "particles.csv")


def _select(run: Path, out: Path, *args: str):
    return runner.invoke(app, ["select", str(run), "-o", str(out), *args])


def _cut(values: pd.Series, k: int) -> str:
    """A threshold with about ``k`` of ``values`` below it, midway between two that differ
    (so the tables' float32 and CSV roundings agree on every particle's side)."""
    v = np.sort(values.to_numpy(np.float64))
    k = next(j for j in range(k, len(v)) if v[j] - v[j - 1] > 1e-4)
    return f"{(v[k - 1] + v[k]) / 2:.9g}"


def _one_line_error(r, *words: str) -> None:
    assert r.exit_code == 1, r.output
    assert len(r.output.strip().splitlines()) == 1, r.output
    assert "Traceback" not in r.output
    for w in words:
        assert w in r.output, r.output


def _particles(stack: Path, n: int = N) -> pd.DataFrame:
    """Input STAR rows with columns of every kind, values of more than 6 decimals included."""
    rng = np.random.default_rng(1)
    return pd.DataFrame(
        {
            "rlnImageName": [f"{k:06d}@{stack.name}" for k in range(1, n + 1)],
            "rlnMicrographName": [f"mic{k // 10}.mrc" for k in range(n)],
            "rlnDefocusU": np.arange(n) * 100.5 + 10000.0,
            "rlnAutopickFigureOfMerit": rng.normal(0, 1e-3, n),  # ~1e-4: 9 digits kept
            "rlnClassNumber": np.arange(n) % 4 + 1,
            "rlnAnglePsi": np.full(n, 99.0),
        }
    )


def _star31(stack: Path) -> Path:
    star = stack.parent / "in31.star"
    particles = _particles(stack).assign(rlnOpticsGroup=1)
    starfile.write({"optics": optics_table(), "particles": particles}, star, float_format="%.9g")
    return star


# ----------------------------------------------------------------------------- the library


def _table(n: int = 8) -> pd.DataFrame:
    rows = np.array([7, 2, 5, 0, 3, 9, 4, 1])[:n]  # a run fitted on a shuffled --ind subset
    return pd.DataFrame(
        {
            "image": [f"{r + 1}@s.mrcs" for r in rows],
            "input_row": rows,
            "theta_deg": np.linspace(-170, 170, n),
            "theta_prob": np.linspace(0.5, 1.0, n),
            "z1": np.linspace(-1, 1, n),
            "split": ["train"] * (n - 2) + ["test"] * 2,
        }
    )


def test_select_rows_by_query_indices_and_clusters_matched_by_name():
    t = _table()
    pos = select_rows(t, query="z1 > 0 and theta_prob > 0.9")
    assert pos.tolist() == [6, 7]  # z1 > 0 from position 4, theta_prob > 0.9 from 6
    assert selected_input_rows(t, pos).tolist() == [1, 4]  # input rows, ascending
    assert select_rows(t, query="split == 'test'", invert=True).tolist() == list(range(6))
    assert select_rows(t, indices=np.array([9, 0])).tolist() == [3, 5]
    assert selected_input_rows(t, select_rows(t, indices=np.array([9, 0]))).tolist() == [0, 9]
    # clusters.csv in another order: rows are matched by image name, not position
    clusters = t[["image", "input_row"]].assign(cluster=[1, 2, 3, 1, 2, 3, 1, 2], PC1=t["z1"] * 2)
    clusters = clusters.iloc[::-1].reset_index(drop=True)
    assert select_rows(t, clusters=[1, 3], cluster_table=clusters).tolist() == [0, 2, 3, 5, 6]
    others = select_rows(t, clusters=[2], cluster_table=clusters, invert=True)
    assert others.tolist() == [0, 2, 3, 5, 6]
    by_query = select_rows(t, query="cluster == 2 and PC1 > 0", cluster_table=clusters)
    assert by_query.tolist() == [4, 7]


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({}, "exactly one"),
        ({"query": "z1 > 0", "indices": np.array([0])}, "exactly one"),
        ({"query": "z9 > 0"}, "no column 'z9'"),
        ({"query": "z1 >"}, "not a valid condition"),
        ({"query": "z1 * 2"}, "not true/false"),
        ({"query": "z1 > 5"}, "selects none of the run's 8 particles"),
        ({"query": "z1 > -5", "invert": True}, "selects none"),
        ({"indices": np.array([0, 6])}, "input row 6 is not one of the run's 8 particles"),
        ({"clusters": [1]}, "emvae analyze RUN first"),
    ],
)
def test_select_rows_refuses_with_one_clear_message(kwargs, words):
    with pytest.raises(ConfigError, match=words.replace("*", r"\*")):
        select_rows(_table(), **kwargs)


def test_clusters_of_another_fit_are_refused():
    t = _table()
    other = pd.DataFrame({"image": ["1@other.mrcs"], "cluster": [1]})
    with pytest.raises(InputError, match="has no row for 8 of the run's 8 particles"):
        select_rows(t, clusters=[1], cluster_table=other)
    with pytest.raises(ConfigError, match="no cluster 4"):
        select_rows(t, clusters=[4], cluster_table=t[["image"]].assign(cluster=1))


def test_output_paths_take_out_as_a_stem(tmp_path):
    names = [p.name for p in output_paths(tmp_path / "sel" / "state1", ".star")]
    assert names == ["state1.txt", "state1.npy", "state1.star"]
    assert [p.name for p in output_paths("a/b.v2.cs", ".cs")] == ["b.v2.txt", "b.v2.npy", "b.v2.cs"]
    assert [p.name for p in output_paths("x.star", None)] == ["x.txt", "x.npy"]


# ----------------------------------------------------------------------------- STAR inputs


def test_star31_subset_keeps_rows_columns_optics_and_refits_with_ind(tiny_stack, tmp_path):
    star = _star31(tiny_stack)
    given = starfile.read(star, always_dict=True)
    run = tmp_path / "run"
    table = _fit([str(star)], run)
    assert table["input_row"].tolist() == list(range(N))

    sel = tmp_path / "sel" / "state1"
    z, prob = _cut(table["z1"], 40), _cut(table["theta_prob"], 50)
    query = f"z1 > {z} or theta_prob > {prob}"
    r = _select(run, sel, "--query", query)
    assert r.exit_code == 0, r.output
    want = np.flatnonzero((table["z1"] > float(z)) | (table["theta_prob"] > float(prob)))
    assert 0 < len(want) < N
    assert f"{len(want)} of {N} particles" in r.output and "RELION 3.1" in r.output
    rows = np.loadtxt(sel.with_suffix(".txt"), dtype=np.int64)
    assert rows.tolist() == want.tolist()
    assert np.load(sel.with_suffix(".npy")).tolist() == want.tolist()
    got = starfile.read(sel.with_suffix(".star"), always_dict=True)
    assert list(got) == ["optics", "particles"]
    pd.testing.assert_frame_equal(got["optics"], given["optics"])
    pd.testing.assert_frame_equal(
        got["particles"], given["particles"].iloc[want].reset_index(drop=True)
    )
    # the 9-digit figures of merit come back exactly, not rounded to RELION's 6 decimals
    assert np.array_equal(
        got["particles"]["rlnAutopickFigureOfMerit"],
        given["particles"]["rlnAutopickFigureOfMerit"].to_numpy()[want],
    )
    assert sel.with_suffix(".star").read_text().count("# version 30001") == 2

    # --invert: the complement, nothing shared
    r = _select(run, tmp_path / "rest", "--query", query, "--invert")
    assert r.exit_code == 0, r.output
    rest = np.load(tmp_path / "rest.npy")
    assert sorted([*rest.tolist(), *rows.tolist()]) == list(range(N))
    pd.testing.assert_frame_equal(
        starfile.read(tmp_path / "rest.star", always_dict=True)["particles"],
        given["particles"].iloc[rest].reset_index(drop=True),
    )

    # the list is what fit --ind takes: the same input, refitted on the selection
    sub = tmp_path / "sub"
    refit = _fit([str(star)], sub, "--ind", str(sel.with_suffix(".txt")))
    assert refit["input_row"].tolist() == rows.tolist()
    assert read_indices(sel.with_suffix(".npy"), N).tolist() == rows.tolist()

    # selecting from the subset run: input rows of the full input, not positions in the run
    pick = rows[::3]
    np.save(tmp_path / "pick.npy", pick)
    r = _select(sub, tmp_path / "pick_sel", "--indices", str(tmp_path / "pick.npy"))
    assert r.exit_code == 0, r.output
    assert f"{len(pick)} of {len(rows)} particles" in r.output
    assert np.load(tmp_path / "pick_sel.npy").tolist() == pick.tolist()
    pd.testing.assert_frame_equal(
        starfile.read(tmp_path / "pick_sel.star", always_dict=True)["particles"],
        given["particles"].iloc[pick].reset_index(drop=True),
    )
    r = _select(sub, tmp_path / "pick_inv", "--indices", str(tmp_path / "pick.npy"), "--invert")
    assert r.exit_code == 0, r.output
    assert np.load(tmp_path / "pick_inv.npy").tolist() == np.setdiff1d(rows, pick).tolist()
    outside = int(np.setdiff1d(np.arange(N), rows)[0])
    (tmp_path / "outside.txt").write_text(f"{rows[0]}\n{outside}\n")
    r = _select(sub, tmp_path / "bad", "--indices", str(tmp_path / "outside.txt"))
    _one_line_error(r, f"input row {outside} is not one of the run's {len(rows)} particles")

    # never overwrites without --force, never writes over the run or its inputs
    r = _select(run, sel, "--query", f"z1 > {z}")
    _one_line_error(r, "exists; use --force")
    assert np.loadtxt(sel.with_suffix(".txt"), dtype=np.int64).tolist() == rows.tolist()
    r = _select(run, sel, "--query", f"z1 > {z}", "--force")
    assert r.exit_code == 0, r.output
    want = np.flatnonzero(table["z1"] > float(z))
    assert np.load(sel.with_suffix(".npy")).tolist() == want.tolist()
    for stem in (run / "particles", star.with_suffix("")):
        r = _select(run, stem, "--query", f"z1 > {z}", "--force")
        _one_line_error(r, "never writes over its inputs")
    assert starfile.read(star, always_dict=True)["particles"].shape == given["particles"].shape

    # the input changed since the fit: one line, nothing written
    starfile.write({"optics": optics_table(), "particles": given["particles"].iloc[:50]}, star)
    r = _select(run, tmp_path / "late", "--query", f"z1 > {z}")
    _one_line_error(r, "now holds 50 particles but the run was fitted on 60")
    assert not list(tmp_path.glob("late*"))


def test_star30_input_keeps_its_single_block(tiny_stack, tmp_path):
    star = tiny_stack.parent / "in30.star"
    starfile.write(_particles(tiny_stack), star, float_format="%.9g")
    given = starfile.read(star)
    table = _fit([str(star)], tmp_path / "run")
    r = _select(tmp_path / "run", tmp_path / "s", "--query", "split == 'train'")
    assert r.exit_code == 0, r.output
    assert "RELION 3.0" in r.output
    want = np.flatnonzero((table["split"] == "train").to_numpy())
    got = starfile.read(tmp_path / "s.star")
    assert isinstance(got, pd.DataFrame)  # one block, no optics table
    text = (tmp_path / "s.star").read_text()
    assert "data_optics" not in text and "# version 30001" not in text
    assert text.count("data_") == 1
    pd.testing.assert_frame_equal(got, given.iloc[want].reset_index(drop=True))
    # rows reordered in the input since the fit: named as the run did not name them
    starfile.write(given.iloc[::-1].reset_index(drop=True), star)
    r = _select(tmp_path / "run", tmp_path / "t", "--query", "split == 'train'")
    _one_line_error(r, "the file has changed since the fit")


# ----------------------------------------------------------------------------- cryoSPARC input


def test_cryosparc_subset_keeps_dtype_uid_and_values(tiny_stack, tmp_path):
    rng = np.random.default_rng(2)
    cs = np.zeros(
        N,
        dtype=[
            ("uid", "<u8"),
            ("blob/path", "S40"),
            ("blob/idx", "<u4"),
            ("blob/psize_A", "<f4"),
            ("blob/shape", "<u4", (2,)),
            ("alignments2D/class", "<u4"),
            ("location/center_x_frac", "<f8"),
        ],
    )
    cs["uid"] = rng.integers(0, 2**63, N, dtype=np.uint64)
    cs["blob/path"] = f">J1/imported/{tiny_stack.name}".encode()
    cs["blob/idx"] = np.arange(N)
    cs["blob/psize_A"] = 1.5
    cs["blob/shape"] = 16
    cs["alignments2D/class"] = np.arange(N) % 5
    cs["location/center_x_frac"] = rng.uniform(0, 1, N)
    path = tmp_path / "P1_J2_particles.cs"
    with open(path, "wb") as f:
        np.save(f, cs)
    run = tmp_path / "run"
    table = _fit([str(path), "--datadir", str(tiny_stack.parent)], run)
    cut = _cut(table["theta_deg"], 25)
    r = _select(run, tmp_path / "sel", "--query", f"theta_deg > {cut}")
    assert r.exit_code == 0, r.output
    want = np.flatnonzero((table["theta_deg"] > float(cut)).to_numpy())
    assert 0 < len(want) < N and "cryoSPARC" in r.output
    assert sorted(p.name for p in tmp_path.glob("sel*")) == ["sel.cs", "sel.npy", "sel.txt"]
    back = np.load(tmp_path / "sel.cs", allow_pickle=False)
    assert back.dtype == cs.dtype
    assert np.array_equal(back, cs[want])  # every field, uid included
    # what cryoSPARC's importer reads, emvae reads too: the selected images
    sub = open_stack(tmp_path / "sel.cs", datadir=tiny_stack.parent)
    assert [int(n.partition("@")[0]) - 1 for n in sub.names] == want.tolist()
    assert np.load(tmp_path / "sel.npy").tolist() == want.tolist()


# ----------------------------------------------------------------------------- plain stacks


def test_mrcs_gets_index_lists_clusters_and_clear_errors(tiny_stack, tmp_path):
    run = tmp_path / "run"
    table = _fit([str(tiny_stack)], run)
    r = _select(run, tmp_path / "c", "--cluster", "1,3")
    _one_line_error(r, "analyze/clusters.csv: not found", "emvae analyze")
    assert not list(tmp_path.glob("c.*"))
    for query, words in (
        ("zz > 1", "no column 'zz'"),
        ("z1 > 1e9", f"selects none of the run's {N} particles"),
    ):
        r = _select(run, tmp_path / "q", "--query", query)
        _one_line_error(r, words)
    assert not list(tmp_path.glob("q.*"))

    # clusters.csv as emvae analyze writes it, its rows in another order than the table's
    cluster = np.arange(N) % 4 + 1
    clusters = pd.DataFrame(
        {
            "image": table["image"],
            "input_row": table["input_row"],
            "cluster": cluster,
            "PC1": np.linspace(-1, 1, N),
        }
    ).iloc[np.random.default_rng(0).permutation(N)]
    (run / "analyze").mkdir()
    clusters.to_csv(run / "analyze" / "clusters.csv", index=False)
    stamp_analysis(run)
    r = _select(run, tmp_path / "c", "--cluster", "1,3")
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in tmp_path.glob("c.*")) == ["c.npy", "c.txt"]
    want = np.flatnonzero(np.isin(cluster, [1, 3]))
    assert len(want) == 30 and f"30 of {N} particles" in r.output
    assert np.load(tmp_path / "c.npy").tolist() == want.tolist()
    r = _select(run, tmp_path / "d", "--query", "cluster == 2 and PC1 > 0 and z1 == z1")
    assert r.exit_code == 0, r.output
    want_d = np.flatnonzero((cluster == 2) & (np.linspace(-1, 1, N) > 0))
    assert np.load(tmp_path / "d.npy").tolist() == want_d.tolist()
    r = _select(run, tmp_path / "e", "--cluster", "2,7")
    _one_line_error(r, "no cluster 7", "1, 2, 3, 4")
    # and the list refits the same stack on those images
    refit = _fit([str(tiny_stack)], tmp_path / "sub", "--ind", str(tmp_path / "c.txt"))
    assert refit["input_row"].tolist() == want.tolist()


def test_analyze_then_select_a_cluster_of_a_star_fit(tmp_path):
    """emvae analyze on a fit of a RELION STAR input, then select --cluster: the subset's STAR
    rows are the input rows of that cluster's particles."""
    sim = tmp_path / "sim"
    r = runner.invoke(app, ["simulate", str(sim), "-n", "60", "--size", "16", "--snr", "5"])
    assert r.exit_code == 0, r.output
    run = tmp_path / "run"
    _fit([str(sim / "particles.star")], run)
    r = runner.invoke(app, ["analyze", str(run), "-k", "2"])
    assert r.exit_code == 0, r.output
    clusters = pd.read_csv(run / "analyze" / "clusters.csv")
    r = _select(run, tmp_path / "c1", "--cluster", "1")
    assert r.exit_code == 0, r.output
    want = np.sort(clusters.loc[clusters["cluster"] == 1, "input_row"].to_numpy())
    assert np.load(tmp_path / "c1.npy").tolist() == want.tolist()
    star = starfile.read(sim / "particles.star", always_dict=True)
    sub = starfile.read(tmp_path / "c1.star", always_dict=True)
    expect = star["particles"].iloc[want].reset_index(drop=True)
    pd.testing.assert_frame_equal(sub["particles"], expect)
    pd.testing.assert_frame_equal(sub["optics"], star["optics"])
