"""Reading MRC stacks, the particle table, and malformed input."""

import mrcfile
import numpy as np
import pandas as pd
import pytest
import torch
from conftest import DATA, real_data

from emvae.data import load_images, normalize_, tensor_statistics
from emvae.errors import InputError
from emvae.io import read_stack, read_table, write_table
from emvae.io.stack import image_key, image_name, same_image, split_image_name


def test_mrc_stack_is_memory_mapped_with_1_based_names(write_stack):
    imgs = np.arange(3 * 5 * 5, dtype=np.float32).reshape(3, 5, 5)
    p = write_stack(imgs, apix=1.7)
    s = read_stack(p)
    assert s.images.shape == (3, 1, 5, 5)
    assert np.array_equal(s.images[:][:, 0], imgs)
    assert np.array_equal(s.images[np.array([2, 0])][:, 0], imgs[[2, 0]])
    assert s.names == [f"1@{p}", f"2@{p}", f"3@{p}"]
    assert s.apix == pytest.approx(1.7)


def test_single_2d_image_and_zero_pixel_size(tmp_path):
    p = tmp_path / "one.mrc"
    with mrcfile.new(p) as m:
        m.set_data(np.ones((6, 6), dtype=np.int16))
    s = read_stack(p)
    assert s.images.shape == (1, 1, 6, 6) and s.apix is None


@pytest.mark.parametrize("mode_dtype", [np.int8, np.int16, np.float32, np.uint16, np.float16])
def test_mrc_modes_read_as_float(tmp_path, mode_dtype):
    p = tmp_path / "m.mrcs"
    data = (np.arange(2 * 4 * 4) % 7).astype(mode_dtype).reshape(2, 4, 4)
    with mrcfile.new(p) as m:
        m.set_data(data)
    s = read_stack(p)
    assert np.array_equal(np.asarray(s.images[:, 0], dtype=np.float32), data.astype(np.float32))


def test_relion_written_stack_reads_with_its_voxel_size():
    """relion_project's stack in tests/data: 8 float32 images and RELION's 2.5 A voxel size."""
    s = read_stack(DATA / "blobs31.mrcs")
    assert s.images.shape == (8, 1, 32, 32) and s.apix == 2.5
    with open(DATA / "blobs31.mrcs", "rb") as f:  # mode 2 (float32) after the 1024-byte header
        f.seek(1024)
        raw = np.frombuffer(f.read(), dtype="<f4").reshape(8, 32, 32)
    assert np.array_equal(s.images[:][:, 0], raw) and np.array_equal(s.images[5][0], raw[5])
    assert s.names[2] == f"3@{DATA / 'blobs31.mrcs'}"


def test_real_relion_stack_reads():
    s = read_stack(real_data("em/relion31.mrcs") / "em" / "relion31.mrcs")
    assert s.images.shape == (5, 1, 256, 256) and np.isfinite(s.images[0]).all()


def _msg(excinfo):
    return str(excinfo.value)


def test_same_image_ignores_folders_and_index_padding_only():
    assert same_image("000012@Extract/job7/a.mrcs", "12@/data/a.mrcs")
    assert not same_image("12@a.mrcs", "13@a.mrcs") and not same_image("12@a.mrcs", "12@b.mrcs")
    assert same_image("pics/g1.png", "pics/g1.png") and not same_image("a/g1.png", "b/g1.png")


def test_image_names_are_made_and_read_by_one_pair_of_functions():
    assert image_name(12, "Extract/a.mrcs") == "12@Extract/a.mrcs"
    assert image_name(12, "a.mrcs", digits=6) == "000012@a.mrcs"
    assert split_image_name("000012@Extract/a.mrcs") == (12, "Extract/a.mrcs")
    assert split_image_name("pics/g1.png") is None
    assert image_key("000012@Extract/a.mrcs") == image_key("12@/data/a.mrcs") == (12, "a.mrcs")
    assert image_key("pics/g1.png") == (1, "g1.png")


def test_missing_file(tmp_path):
    with pytest.raises(InputError, match="no such file") as e:
        read_stack(tmp_path / "nope.mrcs")
    assert "nope.mrcs" in _msg(e)


def test_not_an_mrc(tmp_path):
    p = tmp_path / "fake.mrcs"
    p.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 2000)
    with pytest.raises(InputError, match="not a readable MRC file") as e:
        read_stack(p)
    assert "fake.mrcs" in _msg(e)


def test_truncated_mrc(write_stack):
    p = write_stack(np.zeros((4, 16, 16), np.float32))
    p.write_bytes(p.read_bytes()[:-100])
    with pytest.raises(InputError, match="not a readable MRC file"):
        read_stack(p)


def test_empty_stack(tmp_path):
    p = tmp_path / "empty.mrcs"
    with mrcfile.new(p) as m:
        m.set_data(np.zeros((0, 8, 8), np.float32))
    with pytest.raises(InputError, match="contains no images"):
        read_stack(p)


def test_non_square(write_stack):
    with pytest.raises(InputError, match="square"):
        read_stack(write_stack(np.zeros((3, 8, 10), np.float32)))


def test_unknown_suffix(tmp_path):
    p = tmp_path / "x.tif"
    p.write_bytes(b"abc")
    with pytest.raises(InputError, match="unknown suffix"):
        read_stack(p)


def test_nan_is_reported_with_image_number(write_stack):
    imgs = np.random.default_rng(0).normal(size=(5, 8, 8)).astype(np.float32)
    imgs[3, 2, 2] = np.nan
    s = read_stack(write_stack(imgs))
    with pytest.raises(InputError, match=r"image 4 \(index 3\) contains NaN"):
        load_images(s, torch.device("cpu"))


def test_statistics_and_normalised_loading(write_stack):
    imgs = np.random.default_rng(1).normal(3.0, 2.0, size=(10, 8, 8)).astype(np.float32)
    s = read_stack(write_stack(imgs))
    t = load_images(s, torch.device("cpu"))
    assert torch.equal(t[:, 0], torch.from_numpy(imgs))
    mean, std, lo, hi = tensor_statistics(t)
    assert mean == pytest.approx(imgs.mean(dtype=np.float64))
    assert std == pytest.approx(imgs.std(dtype=np.float64), rel=1e-6)
    assert (lo, hi) == (imgs.min(), imgs.max())
    normalize_(t, mean, std)
    assert abs(float(t.mean())) < 1e-5 and float(t.std()) == pytest.approx(1.0, rel=1e-2)
    sub = load_images(s.subset(np.array([7, 2])), torch.device("cpu"))
    assert torch.allclose(normalize_(sub, mean, std), t[[7, 2]])


@pytest.mark.parametrize("suffix", [".csv", ".h5"])
def test_table_round_trip(tmp_path, suffix):
    df = pd.DataFrame(
        {
            "image": ["1@a.mrcs", "2@a.mrcs"],
            "theta_deg": [10.5, -170.25],
            "z1": [0.1, -0.2],
            "split": ["train", "test"],
        }
    )
    p = tmp_path / f"t{suffix}"
    write_table(df, p)
    back = read_table(p)
    assert list(back.columns) == list(df.columns)
    assert back["image"].tolist() == df["image"].tolist()
    assert np.allclose(back["theta_deg"], df["theta_deg"])
