"""NumPy ``.npy`` (memory-mapped) and HDF5 datasets (``file.h5:/dataset``), and the HDF5 cache
that ``emvae preprocess`` writes."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import h5py
import numpy as np

from emvae.errors import InputError
from emvae.io.stack import ImageStack, StackNames, as_images, image_shape, read_rows

if TYPE_CHECKING:
    from emvae.preprocess import Prepared

NPY_SUFFIXES = (".npy",)
H5_SUFFIXES = (".h5", ".hdf5", ".hdf")
CACHE_FORMAT = "emvae-images/1"


def split_h5_path(spec: str) -> tuple[Path, str | None]:
    """``"file.h5:/group/data"`` -> (file, "/group/data"); a bare file gives (file, None)."""
    for suffix in H5_SUFFIXES:
        key = suffix + ":"
        if key in spec.lower():
            at = spec.lower().index(key) + len(suffix)
            return Path(spec[:at]), spec[at + 1 :] or None
    return Path(spec), None


def read_npy(path: str | os.PathLike[str]) -> ImageStack:
    """A ``(D, D)``, ``(N, D, D)`` or ``(N, C, D, D)`` array, memory-mapped."""
    p = Path(path)
    if not p.exists():
        raise InputError(p, "no such file")
    try:
        data = np.load(p, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise InputError(p, f"not a readable .npy file ({e})") from None
    data = as_images(data, p, "the array")
    return ImageStack(
        images=data,
        names=StackNames(p, data.shape[0]),
        apix=None,
        source=str(p),
        format=f"NumPy .npy ({data.dtype})",
    )


class H5Source:
    """One HDF5 dataset ``(N, C, D, D)``, opened for each read (the file is not held open)."""

    def __init__(
        self, path: Path, name: str, shape: tuple[int, int, int, int], dtype: np.dtype[Any]
    ) -> None:
        self.path, self.name, self.shape, self.dtype = path, name, shape, dtype

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key: int | slice | np.ndarray) -> np.ndarray:
        with h5py.File(self.path, "r") as f:
            ds = f[self.name]
            if isinstance(key, (int, np.integer)):
                return np.asarray(ds[key]).reshape(self.shape[1:])
            if isinstance(key, slice):
                data = np.asarray(ds[key])
            else:  # h5py wants sorted unique indices
                rows, inverse = np.unique(np.asarray(key), return_inverse=True)
                data = read_rows(ds, rows)[inverse]
        return data.reshape((-1, *self.shape[1:]))


def read_hdf5(spec: str | os.PathLike[str]) -> ImageStack:
    """A dataset of an HDF5 file, ``file.h5:/dataset``; the dataset may be left out when the
    file holds one image dataset or is an emvae cache (``/images``). Contiguous uncompressed
    datasets are memory-mapped; others are read in slabs through h5py."""
    p, name = split_h5_path(str(spec))
    if not p.exists():
        raise InputError(p, "no such file")
    try:
        f = h5py.File(p, "r")
    except OSError as e:
        raise InputError(p, f"not a readable HDF5 file ({e})") from None
    with f:
        datasets: list[str] = []
        f.visititems(lambda k, v: datasets.append("/" + k) if isinstance(v, h5py.Dataset) else None)
        if name is None:
            arrays = [d for d in datasets if f[d].ndim >= 2]
            if "/images" in datasets:
                name = "/images"
            elif len(arrays) == 1:
                name = arrays[0]
            else:
                raise InputError(
                    p,
                    f"holds {len(arrays)} array datasets ({', '.join(arrays[:6]) or 'none'}); "
                    f"name one as {p}:/dataset",
                )
        if name not in f or not isinstance(f[name], h5py.Dataset):
            raise InputError(p, f"has no dataset {name!r} (datasets: {', '.join(datasets[:8])})")
        ds = f[name]
        full = image_shape(ds.shape, ds.dtype, p, f"dataset {name}")
        offset = ds.id.get_offset()
        images: np.ndarray | H5Source
        if ds.chunks is None and ds.compression is None and offset is not None:
            images = np.memmap(p, dtype=ds.dtype, mode="r", offset=offset, shape=ds.shape)
            images = images.reshape(full)
        else:
            images = H5Source(p, name, full, ds.dtype)
        attrs = dict(f.attrs)
        stack = ImageStack(
            images=images,
            names=StackNames(p, full[0]),
            apix=None,
            source=str(spec),
            format=f"HDF5 dataset {name} ({ds.dtype})",
        )
        if attrs.get("format") == CACHE_FORMAT:
            try:
                _apply_cache_attrs(stack, f, attrs)
            except (KeyError, ValueError, TypeError) as e:
                raise InputError(
                    p, f"a damaged emvae cache ({str(e)[:120]}); make it again"
                ) from None
            assert stack.rows is not None  # filled in by ImageStack.__post_init__
            if len(stack.names) != len(stack) or len(stack.rows) != len(stack):
                raise InputError(
                    p,
                    f"a damaged emvae cache: {len(stack.names)} names and {len(stack.rows)} rows "
                    f"for {len(stack)} images; make it again",
                )
    if len(stack) == 0:
        raise InputError(p, "contains no images")
    return stack


def _apply_cache_attrs(stack: ImageStack, f: h5py.File, attrs: dict[str, Any]) -> None:
    stack.format = f"emvae preprocessed cache (HDF5) of {attrs.get('source', '?')}"
    stack.names = [n.decode() if isinstance(n, bytes) else str(n) for n in f["names"][()]]
    if "rows" in f:
        stack.rows = f["rows"][()].astype(np.int64)
    if "offsets" in f:
        stack.offsets = f["offsets"][()].astype(np.float64)
    apix = float(attrs.get("apix", 0.0))
    stack.apix = apix if apix > 0 else None
    stack.apix_from = "emvae cache" if stack.apix else None
    arcsec = float(attrs.get("arcsec_per_px", 0.0))  # absent in caches made before it was kept
    stack.arcsec_per_px = arcsec if arcsec > 0 else None
    stack.arcsec_from = "emvae cache" if stack.arcsec_per_px else None
    stack.preprocessed = json.loads(attrs["preprocess"])
    stack.input_size = int(attrs["input_size"])
    stack.scale = float(attrs.get("scale", 1.0))
    stack.likelihood = str(attrs.get("likelihood", "gaussian"))


def create_cache(path: Path, n: int, channels: int, size: int) -> tuple[h5py.File, h5py.Dataset]:
    """A new HDF5 cache with a contiguous float32 ``/images`` dataset ``(n, C, D, D)`` to be
    filled in slabs (contiguous so that readers can memory-map it)."""
    f = h5py.File(path, "w")
    ds = f.create_dataset("images", shape=(n, channels, size, size), dtype=np.float32)
    f.attrs["format"] = CACHE_FORMAT
    return f, ds


def finish_cache(
    f: h5py.File,
    stack: ImageStack,
    preprocess: dict[str, Any],
    prepared: Prepared,
    likelihood: str,
) -> None:
    """Write what maps the cached images back to the input (names, rows, offsets, settings);
    ``prepared``: the :class:`emvae.preprocess.Prepared` that made them."""
    offsets = prepared.offsets
    f.create_dataset("names", data=np.array(stack.names, dtype=object), dtype=h5py.string_dtype())
    f.create_dataset("rows", data=np.asarray(stack.rows, dtype=np.int64))
    if offsets is not None:
        f.create_dataset("offsets", data=np.asarray(offsets, dtype=np.float64))
    f.attrs["apix"] = float(stack.apix or 0.0)  # of the input pixels
    f.attrs["arcsec_per_px"] = float(stack.arcsec_per_px or 0.0)  # sky images, input pixels
    f.attrs["scale"] = float(prepared.scale)  # input pixels per cached pixel
    f.attrs["preprocess"] = json.dumps(preprocess)
    f.attrs["input_size"] = stack.input_size or stack.size
    f.attrs["likelihood"] = likelihood
    f.attrs["source"] = stack.source
