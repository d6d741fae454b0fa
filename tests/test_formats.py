"""Every input format gives the same images; metadata, subsets and pixel sizes are kept."""

from __future__ import annotations

import pickle
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import starfile

from emvae.errors import InputError
from emvae.io import open_stack, read_stack, write_mrc

N, D = 12, 16


@pytest.fixture
def images() -> np.ndarray:
    return np.random.default_rng(7).normal(size=(N, D, D)).astype(np.float32)


def _star(path: Path, names: list[str], optics: pd.DataFrame | None = None, **cols) -> Path:
    particles = pd.DataFrame({"rlnImageName": names, **cols})
    if optics is None:
        starfile.write(particles, path)
    else:
        starfile.write({"optics": optics, "particles": particles}, path)
    return path


def _optics(apix=(1.5,), size=D) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "rlnOpticsGroup": list(range(1, len(apix) + 1)),
            "rlnImagePixelSize": list(apix),
            "rlnImageSize": [size] * len(apix),
            "rlnImageDimensionality": [2] * len(apix),
        }
    )


def test_same_images_from_every_format(tmp_path, images):
    """MRCS, STAR 3.0/3.1 (one or two stacks), TXT, .cs, NPY and HDF5 give identical arrays."""
    (tmp_path / "stacks").mkdir()
    write_mrc(tmp_path / "all.mrcs", images, apix=1.5)
    write_mrc(tmp_path / "stacks" / "a.mrcs", images[:5])
    write_mrc(tmp_path / "stacks" / "b.mrcs", images[5:])
    names = [f"{k:06d}@stacks/a.mrcs" for k in range(1, 6)]
    names += [f"{k:06d}@stacks/b.mrcs" for k in range(1, N - 4)]
    star30 = _star(
        tmp_path / "p30.star", names, rlnDetectorPixelSize=[5.0] * N, rlnMagnification=[38168.0] * N
    )
    star31 = _star(tmp_path / "p31.star", names, _optics(), rlnOpticsGroup=[1] * N)
    (tmp_path / "list.txt").write_text("stacks/a.mrcs\n# comment\n\nstacks/b.mrcs\n")
    cs = np.zeros(
        N,
        dtype=[
            ("uid", "<u8"),
            ("blob/path", "S40"),
            ("blob/idx", "<u4"),
            ("blob/psize_A", "<f4"),
            ("blob/shape", "<u4", (2,)),
        ],
    )
    cs["blob/path"] = [b">J1/imported/all.mrcs"] * N
    cs["blob/idx"] = np.arange(N)
    cs["blob/psize_A"] = 1.5
    with open(tmp_path / "p.cs", "wb") as f:
        np.save(f, cs)
    np.save(tmp_path / "i.npy", images)
    with h5py.File(tmp_path / "i.h5", "w") as f:
        f.create_dataset("contiguous", data=images)
        f.create_dataset(
            "grp/chunked", data=images[:, None], chunks=(4, 1, D, D), compression="gzip"
        )

    reads = {
        "mrcs": open_stack(tmp_path / "all.mrcs"),
        "star30": open_stack(star30),
        "star31": open_stack(star31),
        "txt": open_stack(tmp_path / "list.txt"),
        "two stacks": open_stack([tmp_path / "stacks/a.mrcs", tmp_path / "stacks/b.mrcs"]),
        "cs": open_stack(tmp_path / "p.cs", datadir=tmp_path),
        "npy": open_stack(tmp_path / "i.npy"),
        "h5 contiguous": open_stack(f"{tmp_path / 'i.h5'}:/contiguous"),
        "h5 chunked": open_stack(f"{tmp_path / 'i.h5'}:/grp/chunked"),
    }
    for kind, s in reads.items():
        got = s.images[:]
        assert got.shape == (N, 1, D, D), kind
        assert np.array_equal(got[:, 0], images), kind
        assert np.array_equal(s.images[np.array([9, 2, 2, 11])][:, 0], images[[9, 2, 2, 11]])
    assert isinstance(reads["npy"].images, np.memmap)
    assert isinstance(reads["h5 contiguous"].images, np.memmap)  # a memory map into the HDF5
    assert reads["mrcs"].apix == pytest.approx(1.5)
    assert reads["star31"].apix == 1.5 and reads["star31"].apix_from == "STAR optics table"
    assert reads["star30"].apix == pytest.approx(1.31, abs=1e-3)  # 5 um / 38168 x
    assert reads["cs"].apix == pytest.approx(1.5)
    assert reads["star31"].names[0] == "000001@stacks/a.mrcs"


def test_star_row_order_and_metadata_kept(tmp_path, images):
    write_mrc(tmp_path / "s.mrcs", images)
    order = np.random.default_rng(1).permutation(N)
    star = _star(
        tmp_path / "p.star",
        [f"{k + 1}@s.mrcs" for k in order],
        _optics(),
        rlnOpticsGroup=[1] * N,
        rlnAnglePsi=order * 10.0,
    )
    s = open_stack(star)
    assert np.array_equal(s.images[:][:, 0], images[order])
    assert s.metadata["rlnAnglePsi"].tolist() == list(order * 10.0)
    assert s.star_version == "3.1" and len(s.optics) == 1
    sub = open_stack(star, ind=_write_ind(tmp_path / "ind.npy", [4, 0]))
    assert np.array_equal(sub.images[:][:, 0], images[order[[4, 0]]])
    assert sub.rows.tolist() == [4, 0]
    assert sub.metadata["rlnAnglePsi"].tolist() == [order[4] * 10.0, order[0] * 10.0]


def _write_ind(path: Path, idx) -> Path:
    arr = np.asarray(idx, dtype=np.int64)
    if path.suffix == ".npy":
        np.save(path, arr)
    elif path.suffix == ".pkl":
        with open(path, "wb") as f:
            pickle.dump(arr, f)
    else:
        path.write_text("\n".join(map(str, arr)))
    return path


@pytest.mark.parametrize("suffix", [".npy", ".pkl", ".txt"])
def test_ind_subset(tmp_path, images, suffix):
    write_mrc(tmp_path / "s.mrcs", images)
    ind = _write_ind(tmp_path / f"ind{suffix}", [3, 7, 1])
    s = open_stack(tmp_path / "s.mrcs", ind=ind)
    assert np.array_equal(s.images[:][:, 0], images[[3, 7, 1]])
    assert s.names == [f"{k}@{tmp_path / 's.mrcs'}" for k in (4, 8, 2)]


def test_ind_refuses_out_of_range_and_code(tmp_path, images):
    write_mrc(tmp_path / "s.mrcs", images)
    with pytest.raises(InputError, match=f"index {N} is outside the stack"):
        open_stack(tmp_path / "s.mrcs", ind=_write_ind(tmp_path / "i.txt", [0, N]))
    evil = tmp_path / "evil.pkl"
    evil.write_bytes(pickle.dumps(Path("x")))
    with pytest.raises(InputError, match="refusing to unpickle"):
        open_stack(tmp_path / "s.mrcs", ind=evil)


def test_datadir_maps_by_file_name(tmp_path, images):
    (tmp_path / "elsewhere").mkdir()
    write_mrc(tmp_path / "elsewhere" / "stack.mrcs", images)
    star = _star(tmp_path / "p.star", [f"{k}@Extract/job1/Mics/stack.mrcs" for k in (2, 1)])
    with pytest.raises(
        InputError,
        match=r"row 1: stack Extract/job1/Mics/stack.mrcs not found"
        r".*--datadir",
    ):
        open_stack(star)
    s = open_stack(star, datadir=tmp_path / "elsewhere")
    assert np.array_equal(s.images[:][:, 0], images[[1, 0]])


def test_star_errors(tmp_path, images):
    write_mrc(tmp_path / "s.mrcs", images)
    write_mrc(tmp_path / "small.mrcs", images[:, :8, :8])
    with pytest.raises(
        InputError,
        match=rf"row 2: image {N + 1} is beyond the end of .*s.mrcs "
        rf"\({N} images\)",
    ):
        open_stack(_star(tmp_path / "a.star", ["1@s.mrcs", f"{N + 1}@s.mrcs"]))
    with pytest.raises(InputError, match="different sizes"):
        open_stack(_star(tmp_path / "b.star", ["1@s.mrcs", "1@small.mrcs"]))
    with pytest.raises(InputError, match="mixed image sizes"):
        open_stack([tmp_path / "s.mrcs", tmp_path / "small.mrcs"])
    with pytest.raises(InputError, match="rlnImageSize"):
        open_stack(_star(tmp_path / "c.star", ["1@s.mrcs"], _optics(size=64), rlnOpticsGroup=[1]))
    with pytest.raises(InputError, match="no particle table with an rlnImageName"):
        starfile.write(pd.DataFrame({"rlnAngleRot": [1.0]}), tmp_path / "d.star")
        open_stack(tmp_path / "d.star")


def test_optics_groups_with_different_pixel_sizes(tmp_path, images):
    write_mrc(tmp_path / "s.mrcs", images, apix=9.0)
    star = _star(
        tmp_path / "p.star", ["1@s.mrcs", "2@s.mrcs"], _optics((1.0, 1.1)), rlnOpticsGroup=[1, 2]
    )
    s = open_stack(star)
    assert s.apix is None  # not the stack header's 9.0 either
    assert any("pixel sizes differ" in n for n in s.notes)
    assert open_stack(star, apix=2.0).apix == 2.0


def test_h5_needs_a_dataset_name_when_ambiguous(tmp_path, images):
    with h5py.File(tmp_path / "two.h5", "w") as f:
        f["a"] = images
        f["b"] = images
    with pytest.raises(InputError, match=r"holds 2 array datasets \(/a, /b\); name one"):
        read_stack(tmp_path / "two.h5")
    with pytest.raises(InputError, match="no dataset '/c'"):
        read_stack(f"{tmp_path / 'two.h5'}:/c")
