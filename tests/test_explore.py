"""emvae explore (the web app, its API and the page in a real browser) and emvae export-onnx."""

from __future__ import annotations

import base64
import contextlib
import importlib.util
import io
import json
import shutil
import socket
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import runner, stamp_analysis, write_pictures
from emvae_cli.main import app as cli
from PIL import Image

from emvae.config import ModelConfig
from emvae.errors import EmvaeError
from emvae.explore import Batcher, Explorer, to_pixels
from emvae.explore_app import make_app
from emvae.figures.tiles import contrast
from emvae.geometry import image_to_model_pose
from emvae.io import read_indices
from emvae.models import SpatialVAE, pixels_to_images
from emvae.montage import decode_mean
from emvae.objective import pixel_mean
from emvae.render import ONNX_HINT, PosedGenerator, check_onnx, export_onnx, require_onnx
from emvae.run import Run
from emvae.simulate import write_simulation

FIT = ["--gen-hidden", "16", "--enc-hidden", "16", "-n", "2", "-b", "20", "--lr", "1e-3"]
FIT += ["--encoder", "mlp", "--device", "cpu", "-q"]
web = pytest.mark.skipif(
    importlib.util.find_spec("fastapi") is None or importlib.util.find_spec("uvicorn") is None,
    reason="emvae explore needs fastapi and uvicorn (dependencies of emvae: reinstall it)",
)


@pytest.fixture(scope="module")
def grey_run(tmp_path_factory) -> Path:
    """A tiny trained EM run (2-D z) on 60 simulated 16-px particles."""
    root = tmp_path_factory.mktemp("explore")
    stack = write_simulation(root / "sim", n=60, size=16, snr=5.0, shift_std_px=0.5, seed=4)
    out = root / "grey"
    r = runner.invoke(cli, ["fit", str(stack), "-o", str(out), "--zdim", "2", *FIT])
    assert r.exit_code == 0, r.output
    return out


@pytest.fixture(scope="module")
def rgb_run(tmp_path_factory) -> Path:
    """A tiny trained RGB run (galaxy-like pictures, 12 px)."""
    root = tmp_path_factory.mktemp("explore_rgb")
    pics = write_pictures(root / "pics", 10, 24)
    out = root / "rgb"
    args = ["fit", str(pics), "-o", str(out), "--crop", "0", "-D", "12", "--zdim", "2", *FIT]
    r = runner.invoke(cli, args)
    assert r.exit_code == 0, r.output
    return out


@pytest.fixture(scope="module")
def grey(grey_run) -> Explorer:
    return Explorer(Run.open(grey_run), "cpu")


def _png(url: str) -> np.ndarray:
    head, data = url.split(",", 1)
    assert head == "data:image/png;base64"
    with Image.open(io.BytesIO(base64.b64decode(data))) as im:
        return np.asarray(im)


def TestClient(app, **kwargs):  # noqa: N802 (fastapi's class, imported when there)
    from fastapi.testclient import TestClient

    return TestClient(app, **kwargs)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _client(run: Path, tmp_path: Path, **kwargs):
    return TestClient(make_app(run, "cpu", out_dir=tmp_path / "selections"), **kwargs)


# ----------------------------------------------------------------------------- the generator


def test_posed_generator_is_the_models_generator_at_the_tables_pose(grey_run):
    model = Run.open(grey_run).model()[0]
    gen = PosedGenerator(model)
    z = torch.randn(4, 2)
    zero = gen(z, torch.zeros(4), torch.zeros(4, 2))
    assert torch.allclose(zero, decode_mean(model, z), atol=1e-6)
    theta_deg = torch.tensor([30.0, -75.0, 120.0, 0.0])
    shift_px = torch.tensor([[1.0, -0.5], [0.0, 2.0], [-1.5, 0.0], [0.5, 0.5]])
    theta, dx = image_to_model_pose(theta_deg, shift_px, 16)
    with torch.no_grad():
        params = model.decode(z, torch.cat([theta[:, None], dx], 1), full=True)
    want = pixels_to_images(pixel_mean(model.config, params), 16)
    assert torch.allclose(gen(z, theta_deg, shift_px), want, atol=1e-5)


def test_posed_generator_turns_counter_clockwise():
    """theta_deg = 90 turns the canonical view a quarter turn counter-clockwise (+y up, row 0
    on top): what was at the right edge is now at the top."""
    model = SpatialVAE(ModelConfig(image_size=9, zdim=1, gen_hidden=16, enc_hidden=16))
    gen = PosedGenerator(model)
    z = torch.zeros(1, 1)
    with torch.no_grad():
        upright = gen(z, torch.zeros(1), torch.zeros(1, 2))[0, 0]
        turned = gen(z, torch.tensor([90.0]), torch.zeros(1, 2))[0, 0]
    # counter-clockwise on the screen is np.rot90 (row 0 on top)
    assert torch.allclose(turned, torch.from_numpy(np.rot90(upright.numpy()).copy()), atol=1e-5)


@pytest.mark.parametrize(
    "cfg",
    [
        {"zdim": 2},
        {"zdim": 0},
        {"zdim": 3, "channels": 3, "likelihood": "bernoulli"},
    ],
    ids=["grey", "no-z", "rgb-bernoulli"],
)
def test_onnx_export_matches_torch_for_any_batch(cfg, tmp_path):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxscript")
    ort = pytest.importorskip("onnxruntime")
    model = SpatialVAE(ModelConfig(image_size=12, gen_hidden=16, enc_hidden=16, **cfg)).eval()
    path = export_onnx(model, tmp_path / "generator.onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    assert names == (["z"] if cfg["zdim"] else []) + ["theta_deg", "shift_px"]
    gen = PosedGenerator(model)
    for batch in (1, 7):  # exported with 2: the batch axis is dynamic
        g = torch.Generator().manual_seed(batch)
        args = [torch.rand(batch, generator=g) * 360 - 180, torch.randn(batch, 2, generator=g)]
        if cfg["zdim"]:
            args.insert(0, torch.randn(batch, cfg["zdim"], generator=g))
        feed = {n: a.numpy() for n, a in zip(names, args, strict=True)}
        (got,) = session.run(["image"], feed)
        if not cfg["zdim"]:
            args.insert(0, torch.zeros(batch, 0))
        with torch.no_grad():
            want = gen(*args).numpy()
        assert got.shape == (batch, cfg.get("channels", 1), 12, 12)
        assert np.abs(got - want).max() <= 1e-4
    assert check_onnx(model, path) <= 1e-4


def test_export_onnx_command(grey_run, tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    out = tmp_path / "generator.onnx"
    r = runner.invoke(cli, ["export-onnx", str(grey_run), "-o", str(out)])
    assert r.exit_code == 0, r.output
    assert "z (batch, 2), theta_deg (batch,), shift_px (batch, 2)" in r.output
    assert "onnxruntime matches torch" in r.output and out.exists()
    r = runner.invoke(cli, ["export-onnx", str(grey_run), "-o", str(out)])
    assert r.exit_code == 1 and "--force" in r.output


def test_export_onnx_says_what_to_install(grey_run, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import fails
    with pytest.raises(EmvaeError, match=r"pip install 'emvae\[onnx\]'"):
        require_onnx("onnxruntime")
    r = runner.invoke(cli, ["export-onnx", str(grey_run), "-o", str(tmp_path / "g.onnx")])
    assert r.exit_code == 1
    assert ONNX_HINT in r.output and len(r.output.strip().splitlines()) == 1


# ----------------------------------------------------------------------------- the explorer


def test_batcher_runs_concurrent_requests_together():
    calls = []

    def fn(x):
        calls.append(len(x))
        time.sleep(0.02)
        return x * 2

    batcher = Batcher(fn, wait_s=0.01)
    results: dict[int, torch.Tensor] = {}

    def ask(k):
        results[k] = batcher(torch.full((k % 3 + 1, 2), float(k)))

    threads = [threading.Thread(target=ask, args=(k,)) for k in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(5)
    assert sorted(results) == list(range(12))
    for k, out in results.items():  # each caller gets its own rows back
        assert torch.equal(out, torch.full((k % 3 + 1, 2), 2.0 * k))
    assert sum(calls) == sum(k % 3 + 1 for k in range(12))
    assert len(calls) < 12  # some requests shared a forward pass

    def broken(x):
        raise ValueError("no")

    with pytest.raises(ValueError):
        Batcher(broken)(torch.zeros(1))


@web
def test_meta_points_and_colours(grey, grey_run, tmp_path):
    client = _client(grey_run, tmp_path)
    name = grey_run.name
    assert client.get("/api/runs").json() == {"runs": [name]}
    meta = client.get(f"/api/runs/{name}").json()
    assert meta["particles"] == 60 and meta["zdim"] == 2 and meta["kind"] == "grey"
    assert meta["views"][0] == {"name": "z1 / z2", "x": "z1", "y": "z2"}
    assert {"z1", "theta_deg", "elbo", "split"} <= set(meta["colours"])
    assert [d["name"] for d in meta["z"]] == ["z1", "z2"]
    for d, col in zip(meta["z"], ("z1", "z2"), strict=True):
        z = grey.table[col]
        assert d["min"] <= z.quantile(0.005) and d["max"] >= z.quantile(0.995)
    pts = client.get(f"/api/runs/{name}/points", params={"x": "z1", "y": "z2"}).json()
    assert np.allclose(pts["x"], grey.table["z1"]) and np.allclose(pts["y"], grey.table["z2"])
    c = client.get(f"/api/runs/{name}/colours/elbo").json()
    assert c["kind"] == "continuous" and np.allclose(c["values"], grey.table["elbo"])
    c = client.get(f"/api/runs/{name}/colours/split").json()
    assert c["kind"] == "category" and set(c["labels"]) == {"train", "test"}
    assert [c["labels"][k] for k in c["codes"]] == grey.table["split"].tolist()
    page = client.get("/")
    assert page.status_code == 200 and "explore.js" in page.text
    js = client.get("/explore.js")
    assert js.status_code == 200 and "javascript" in js.headers["content-type"]
    assert "http" not in js.text.replace("XMLHttpRequest", "")  # nothing from the internet


@web
def test_generate_renders_the_generator_batched(grey, grey_run, tmp_path):
    client = _client(grey_run, tmp_path)
    z = [[0.5, -1.0], [0.0, 0.0], [2.0, 1.0]]
    body = {"z": z, "theta_deg": [0.0, 45.0, -90.0], "shift_px": [[0, 0], [1, 0], [0, -2]]}
    r = client.post(f"/api/runs/{grey_run.name}/generate", json={**body, "raw": True})
    assert r.status_code == 200, r.text
    out = r.json()
    gen = PosedGenerator(Run.open(grey_run).model()[0])
    with torch.no_grad():
        want = gen(torch.tensor(z), torch.tensor(body["theta_deg"]), torch.tensor(body["shift_px"]))
    assert np.allclose(out["values"], want.numpy(), atol=1e-6)
    lo, hi = out["contrast"]
    assert (lo, hi) == grey.contrast
    for url, image in zip(out["images"], want.numpy(), strict=True):
        assert np.array_equal(_png(url), to_pixels(image, lo, hi))
    one = client.post(f"/api/runs/{grey_run.name}/generate", json={"z": [0.5, -1.0]}).json()
    assert one["images"] == out["images"][:1]  # one z, theta 0 and no shift by default


@web
def test_particle_shows_image_reconstruction_and_pose_free_rendering(grey, grey_run, tmp_path):
    client = _client(grey_run, tmp_path)
    k = 17
    r = client.get(f"/api/runs/{grey_run.name}/particles/{k}")
    assert r.status_code == 200, r.text
    p = r.json()
    row = grey.table.iloc[k]
    assert p["row"]["image"] == row["image"] and p["row"]["input_row"] == row["input_row"]
    assert np.allclose(p["z"], row[["z1", "z2"]].to_numpy(float), atol=1e-4)
    assert abs(((p["theta_deg"] - row["theta_deg"]) + 180) % 360 - 180) < 1e-2
    observed = grey.particles().images(np.array([k]))[0].numpy()
    assert np.array_equal(_png(p["observed"]), to_pixels(observed, *contrast(observed)))
    images = grey.particle_images(k)
    lo, hi = grey.contrast
    assert np.array_equal(_png(p["generator"]), to_pixels(images["generator"], lo, hi))
    model = grey.model
    with torch.no_grad():
        z = torch.tensor([p["z"]])
        assert np.allclose(images["generator"], decode_mean(model, z)[0].numpy(), atol=1e-5)
        q = model.encode(torch.from_numpy(observed)[None])
        recon = pixel_mean(model.config, model.decode(q.z_mu, q.pose_mu, full=True))
    assert np.allclose(images["reconstruction"], pixels_to_images(recon, 16)[0], atol=1e-5)
    assert np.array_equal(_png(p["reconstruction"]), to_pixels(images["reconstruction"], lo, hi))


def test_the_particle_view_sees_the_image_as_the_fit_did(tmp_path):
    """With --ctf phase-flip the observed image is the phase-flipped one the encoder saw; with
    --ctf on the reconstruction carries the particle's CTF, as the likelihood compares it."""
    from emvae.ctf import phase_flipped
    from emvae.objective import with_ctf

    sim = tmp_path / "sim"
    args = ["simulate", str(sim), "-n", "30", "--size", "16", "--ctf", "1:2", "--apix", "3"]
    assert runner.invoke(cli, [*args, "--seed", "3"]).exit_code == 0
    k = 5
    for mode in ("phase-flip", "on"):
        out = tmp_path / mode
        r = runner.invoke(
            cli, ["fit", str(sim / "particles.star"), "-o", str(out), "--ctf", mode, *FIT]
        )
        assert r.exit_code == 0, r.output
        ex = Explorer(Run.open(out), "cpu")
        raw = ex.particles().images(np.array([k]))
        params = ex.particles().ctf(mode)[k : k + 1]
        images = ex.particle_images(k)
        model = ex.model
        seen = phase_flipped(raw, params) if mode == "phase-flip" else raw
        assert np.allclose(images["observed"], seen[0].numpy(), atol=1e-6)
        with torch.no_grad():
            ctf = torch.from_numpy(params)
            q = model.encode(seen, ctf=ctf if mode == "on" else None)  # on: the encoder's CTF
            plain = model.decode(q.z_mu, q.pose_mu, full=True)
            ctf = ctf.to(plain.dtype)
            shown = with_ctf(model.config, plain, ctf) if mode == "on" else plain
            recon = pixels_to_images(pixel_mean(model.config, shown), 16)[0].numpy()
            bare = pixels_to_images(pixel_mean(model.config, plain), 16)[0].numpy()
        assert np.allclose(images["reconstruction"], recon, atol=1e-5)
        if mode == "phase-flip":
            assert (seen - raw).abs().max().item() > 0.1  # the flip changed the image
        else:
            assert np.abs(recon - bare).max() > 1e-3  # the CTF changed the reconstruction


@web
def test_bad_requests_are_4xx_with_a_message(grey_run, tmp_path):
    client = TestClient(
        make_app(grey_run, "cpu", out_dir=tmp_path / "sel"), raise_server_exceptions=False
    )
    name = grey_run.name
    cases = [
        ("get", "/api/runs/nosuchrun", None, 404, "no run named 'nosuchrun'"),
        ("get", "/api/runs/nosuchrun/particles/0", None, 404, "no run named"),
        ("get", f"/api/runs/{name}/particles/60", None, 404, "beyond the stack"),
        ("get", f"/api/runs/{name}/particles/-1", None, 404, "beyond the stack"),
        ("get", f"/api/runs/{name}/particles/999999999999", None, 404, "beyond the stack"),
        ("get", f"/api/runs/{name}/particles/one", None, 422, ""),
        ("get", f"/api/runs/{name}/points?x=z9&y=z2", None, 404, "z9"),
        ("get", f"/api/runs/{name}/colours/nope", None, 404, "nope"),
        ("post", f"/api/runs/{name}/generate", {"z": [1.0, 2.0, 3.0]}, 400, "2 dimensions"),
        ("post", f"/api/runs/{name}/generate", {"z": [[1.0], [2.0]]}, 400, "2 dimensions"),
        ("post", f"/api/runs/{name}/generate", {"z": []}, 400, "2 dimensions"),
        ("post", f"/api/runs/{name}/generate", {"z": "a"}, 422, ""),
        ("post", f"/api/runs/{name}/generate", {"z": [0, 0], "shift_px": [1]}, 400, "pair"),
        ("post", f"/api/runs/{name}/generate", {"z": [[0, 0]] * 3, "theta_deg": [1, 2]}, 400, ""),
        ("post", f"/api/runs/{name}/generate", {"z": [[0, 0]] * 2000}, 400, "at most"),
        ("post", f"/api/runs/{name}/selections", {"indices": [3, 60]}, 404, "beyond the stack"),
        ("post", f"/api/runs/{name}/selections", {"indices": []}, 400, "at least one"),
        ("post", f"/api/runs/{name}/selections", {"indices": [1.5]}, 400, "whole numbers"),
        ("post", f"/api/runs/{name}/selections", {"indices": [1], "name": "../x"}, 400, "name"),
        ("post", f"/api/runs/{name}/selections", {"indices": [1], "name": "a.txt"}, 400, "name"),
    ]
    for method, url, body, status, text in cases:
        r = getattr(client, method)(url, **({} if body is None else {"json": body}))
        assert r.status_code == status, (url, body, r.status_code, r.text)
        assert text in str(r.json()["detail"]), (url, r.text)
    nan = client.post(
        f"/api/runs/{name}/generate",
        content=b'{"z": [NaN, 0]}',
        headers={"Content-Type": "application/json"},
    )
    assert 400 <= nan.status_code < 500
    # the server still answers
    assert client.post(f"/api/runs/{name}/generate", json={"z": [0, 0]}).status_code == 200
    client.post(f"/api/runs/{name}/selections", json={"indices": [1], "name": "once"})
    again = client.post(f"/api/runs/{name}/selections", json={"indices": [2], "name": "once"})
    assert again.status_code == 409 and "exists" in again.json()["detail"]


@web
def test_unknown_run_or_missing_inputs(grey_run, tmp_path):
    with pytest.raises(EmvaeError, match="no such run directory"):
        make_app(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(EmvaeError, match="holds none"):
        make_app(tmp_path / "empty")
    r = runner.invoke(cli, ["explore", str(tmp_path / "nothing"), "--port", str(_free_port())])
    assert r.exit_code == 1 and "no such run directory" in r.output
    # a copy of the run whose input stack has gone: the scatter and the generator work, a
    # particle's images are a 409 that says why
    copy = tmp_path / "moved"
    shutil.copytree(grey_run, copy)
    config = json.loads((copy / "config.json").read_text())
    config["data"]["paths"] = [str(tmp_path / "gone.mrcs")]
    (copy / "config.json").write_text(json.dumps(config))
    client = TestClient(make_app(copy, "cpu"))
    r = client.get(f"/api/runs/{copy.name}/particles/0")
    assert r.status_code == 409 and "cannot be read" in r.json()["detail"]
    assert client.post(f"/api/runs/{copy.name}/generate", json={"z": [0, 0]}).status_code == 200


@web
def test_selection_is_read_by_select_and_fit_ind(grey, grey_run, tmp_path):
    client = _client(grey_run, tmp_path)
    positions = [40, 3, 17, 3, 58]
    r = client.post(f"/api/runs/{grey_run.name}/selections", json={"indices": positions})
    assert r.status_code == 200, r.text
    out = r.json()
    rows = np.sort(grey.table["input_row"].to_numpy()[[3, 17, 40, 58]])
    assert out["count"] == 4 and out["total"] == 60 and out["input_rows"] == rows.tolist()
    txt, npy = (Path(p) for p in out["paths"][:2])
    assert txt == tmp_path / "selections" / "selection_001.txt" and npy.suffix == ".npy"
    assert out["next_name"] == "selection_002"
    assert np.array_equal(read_indices(txt, 60), rows)
    assert np.array_equal(np.load(npy), rows)
    sub = tmp_path / "sub"
    r = runner.invoke(cli, ["select", str(grey_run), "--indices", str(txt), "-o", str(sub)])
    assert r.exit_code == 0, r.output
    assert np.array_equal(np.loadtxt(sub.with_suffix(".txt"), dtype=int), rows)
    stack = Run.open(grey_run).config.data.paths[0]
    fit = tmp_path / "refit"
    args = ["fit", stack, "--ind", str(txt), "-o", str(fit), "--zdim", "1", *FIT]
    args[args.index("-n") + 1] = "1"
    r = runner.invoke(cli, args)
    assert r.exit_code == 0, r.output
    assert Run.open(fit).table()["input_row"].tolist() == rows.tolist()


@web
def test_arrays_are_the_columns_as_float32(grey, grey_run, tmp_path):
    """The page reads each column once, as little-endian float32 in table order (4 bytes a
    particle: a million points are 4 MB, not a JSON list)."""
    client = _client(grey_run, tmp_path)
    name = grey_run.name
    for col in ("z1", "z2", "elbo", "theta_deg", "input_row"):
        r = client.get(f"/api/runs/{name}/arrays/{col}")
        assert r.status_code == 200 and r.headers["content-type"] == "application/octet-stream"
        a = np.frombuffer(r.content, dtype="<f4")
        assert int(r.headers["x-count"]) == len(a) == 60
        assert np.array_equal(a, grey.table[col].to_numpy(np.float32))
    # a text colouring: codes into the labels the colouring lists (and their counts)
    meta = client.get(f"/api/runs/{name}/colours/split", params={"values": False}).json()
    assert "codes" not in meta and meta["labels"] == ["test", "train"]
    codes = np.frombuffer(client.get(f"/api/runs/{name}/arrays/split").content, "<f4")
    labels = np.array(meta["labels"])[codes.astype(int)]
    assert labels.tolist() == grey.table["split"].tolist()
    assert meta["counts"] == [int((grey.table["split"] == s).sum()) for s in meta["labels"]]
    meta = client.get(f"/api/runs/{name}/colours/elbo?values=false").json()
    assert meta["kind"] == "continuous" and "values" not in meta
    assert meta["range"] == [grey.table["elbo"].min(), grey.table["elbo"].max()]
    r = client.get(f"/api/runs/{name}/arrays/nope")
    assert r.status_code == 404 and "nope" in r.json()["detail"]
    assert client.get(f"/api/runs/{name}/arrays/image").status_code == 404  # not a number


@web
def test_save_the_rest_writes_the_complement(grey, grey_run, tmp_path):
    client = _client(grey_run, tmp_path)
    url = f"/api/runs/{grey_run.name}/selections"
    picked = [40, 3, 17, 3, 58]
    r = client.post(url, json={"indices": picked, "rest": True})
    assert r.status_code == 200, r.text
    out = r.json()
    rest = sorted(set(range(60)) - set(picked))
    rows = np.sort(grey.table["input_row"].to_numpy()[rest])
    assert out["rest"] and out["count"] == 56 and out["input_rows"] == rows.tolist()
    txt, npy = (Path(p) for p in out["paths"][:2])
    assert txt == tmp_path / "selections" / "rest_001.txt"  # its own default name
    assert np.array_equal(read_indices(txt, 60), rows) and np.array_equal(np.load(npy), rows)
    assert out["next_rest"] == "rest_002" and out["next_name"] == "selection_001"
    # the selection and the rest split the particles
    sel = client.post(url, json={"indices": picked, "name": "picked"}).json()
    both = np.concatenate([np.load(sel["paths"][1]), np.load(npy)])
    assert sorted(both.tolist()) == sorted(grey.table["input_row"].tolist())
    # nothing selected: the rest is every particle; everything selected: nothing to write
    assert client.post(url, json={"indices": [], "rest": True}).json()["count"] == 60
    r = client.post(url, json={"indices": list(range(60)), "rest": True})
    assert r.status_code == 400 and "the rest is empty" in r.json()["detail"]
    # the same rules as a selection: no overwriting, no name that leaves the folder
    r = client.post(url, json={"indices": [1], "name": "picked", "rest": True})
    assert r.status_code == 409
    for bad in ("../x", "/tmp/x", "a/b", ".hidden", "x.star", "a\\b", "", "é"):
        r = client.post(url, json={"indices": [1], "name": bad or "..", "rest": True})
        assert r.status_code == 400, (bad, r.text)
    stems = {p.name.split(".")[0] for p in (tmp_path / "selections").iterdir()}
    assert stems == {"picked", "rest_001", "rest_002"}


@web
def test_vendored_scatter_library_is_served_from_the_package(grey_run, tmp_path):
    """regl-scatterplot and its two imports ship in emvae/vendor (their licence and the npm
    versions in LICENSE / NOTICE, checksums checked here); the page loads nothing else."""
    import hashlib
    import re

    from emvae.explore_app import VENDOR

    client = _client(grey_run, tmp_path)
    vendor = Path(__file__).resolve().parents[1] / "emvae" / "vendor"
    notice = (vendor / "NOTICE").read_text()
    for name in VENDOR:
        r = client.get(f"/vendor/{name}")
        assert r.status_code == 200 and "javascript" in r.headers["content-type"], name
        assert r.content == (vendor / name).read_bytes()
        if name != "regl-shim.js":
            digest = hashlib.sha256(r.content).hexdigest()
            assert f"{digest}  {name}" in notice, name
    assert "regl-scatterplot  1.16.0   MIT" in notice
    assert "Permission is hereby granted" in (vendor / "LICENSE").read_text()
    for bad in ("../explore.py", "..%2Fexplore.py", "LICENSE", "nope.js"):
        assert client.get(f"/vendor/{bad}").status_code == 404, bad
    page = client.get("/").text
    sources = re.findall(r'(?:src|href)="([^"]+)"', page) + re.findall(r'": "([^"]+)"', page)
    assert sources and all(not s.startswith(("http", "//")) for s in sources), sources
    data = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    assert '"vendor/*"' in data  # in the wheel


def test_the_explorer_modules_import_one_way():
    """emvae.explore (the library) never imports emvae.explore_app (the web app, its serving
    included: one module, issue 36): no circle."""
    import ast

    import emvae.explore
    import emvae.explore_app

    def imported(module) -> set[str]:
        tree = ast.parse(Path(module.__file__).read_text())
        names = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module:
                names |= {node.module, *(f"{node.module}.{a.name}" for a in node.names)}
            elif isinstance(node, ast.Import):
                names |= {a.name for a in node.names}
        return names

    assert not any("explore_app" in n for n in imported(emvae.explore))
    assert "fastapi" not in {n.split(".")[0] for n in imported(emvae.explore)}
    assert "emvae.explore" in imported(emvae.explore_app)
    modules = sorted(p.name for p in Path(emvae.explore.__file__).parent.glob("explore*.py"))
    assert modules == ["explore.py", "explore_app.py"]


@web
def test_rgb_run_and_a_folder_of_runs(grey_run, rgb_run, tmp_path):
    shutil.copytree(grey_run, tmp_path / "runs" / "grey")
    shutil.copytree(rgb_run, tmp_path / "runs" / "rgb")
    client = TestClient(make_app(tmp_path / "runs", "cpu"))
    assert client.get("/api/runs").json() == {"runs": ["grey", "rgb"]}
    meta = client.get("/api/runs/rgb").json()
    assert meta["kind"] == "rgb" and meta["channels"] == 3 and meta["size"] == 12
    p = client.get("/api/runs/rgb/particles/4").json()
    for key in ("observed", "reconstruction", "generator"):
        assert _png(p[key]).shape == (12, 12, 3)
    g = client.post("/api/runs/rgb/generate", json={"z": [0.1, 0.2], "raw": True}).json()
    assert np.asarray(g["values"]).shape == (1, 3, 12, 12)
    assert _png(g["images"][0]).shape == (12, 12, 3)
    assert client.get("/api/runs/grey").json()["kind"] == "grey"
    r = client.post("/api/runs/rgb/selections", json={"indices": [0, 2]})
    assert Path(r.json()["paths"][0]).parent == tmp_path / "runs" / "rgb" / "explore"


def test_analysis_columns_give_views_and_colours(grey_run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(grey_run, copy)
    table = Run.open(copy).table()
    (copy / "analyze").mkdir()
    clusters = pd.DataFrame(
        {
            "image": table["image"][::-1],  # matched by name, not position
            "input_row": table["input_row"][::-1],
            "cluster": (np.arange(60) % 3 + 1)[::-1],
            "PC1": table["z1"][::-1] - 1,
            "PC2": table["z2"][::-1],
        }
    )
    clusters.to_csv(copy / "analyze" / "clusters.csv", index=False)
    stamp_analysis(copy)
    ex = Explorer(Run.open(copy), "cpu")
    meta = ex.meta()
    assert [v["name"] for v in meta["views"]] == ["z1 / z2", "PCA"]
    assert meta["default_colour"] == "cluster"
    c = ex.colours("cluster")
    assert c["kind"] == "category" and c["labels"] == [1, 2, 3]
    assert [c["labels"][k] for k in c["codes"]] == (np.arange(60) % 3 + 1).tolist()
    assert np.allclose(ex.points("PC1", "PC2")["x"], table["z1"] - 1)


@web
def test_explore_command_prints_its_url(grey_run, tmp_path, monkeypatch):
    import emvae.explore_app as explore_app

    served = {}
    monkeypatch.setattr(explore_app, "serve", lambda app, host, port: served.update(h=host, p=port))
    port = _free_port()
    r = runner.invoke(cli, ["explore", str(grey_run), "--port", str(port), "--device", "cpu"])
    assert r.exit_code == 0, r.output
    assert f"http://127.0.0.1:{port}/" in r.output and served == {"h": "127.0.0.1", "p": port}
    with socket.socket() as s:  # a port in use: one line, before loading anything
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        r = runner.invoke(cli, ["explore", str(grey_run), "--port", str(port)])
    assert r.exit_code == 1 and "is in use" in r.output


# ----------------------------------------------------------------------------- the browser


def _chromium() -> str | None:
    for p in (
        "/usr/lib/chromium/chromium",
        shutil.which("chromium"),
        shutil.which("chromium-browser"),
    ):
        if p and Path(p).exists():
            return p
    return None


@contextlib.contextmanager
def in_chromium(run: Path, tmp_path: Path):
    """``(page, url)``: a page of headless Chromium and the URL of ``run``'s explorer (saving
    selections in ``tmp_path/selections``), served by uvicorn on a free local port in a thread;
    a skip without Chromium or playwright."""
    import uvicorn

    chromium = _chromium()
    if chromium is None:
        pytest.skip("no Chromium (apt-get install chromium; .ci/run installs it)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright")
    app = make_app(run, "cpu", out_dir=tmp_path / "selections")
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(
        app, log_level="warning", ws="none", lifespan="off", http="h11", loop="asyncio"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.started
    try:
        # WebGL without a GPU: Chromium's SwiftShader (the flag keeps it allowed in newer builds)
        with sync_api.sync_playwright() as pw:
            browser = pw.chromium.launch(
                executable_path=chromium, headless=True, args=["--enable-unsafe-swiftshader"]
            )
            try:
                page = browser.new_page(viewport={"width": 1400, "height": 1000})
                yield page, f"http://127.0.0.1:{sock.getsockname()[1]}/"
            finally:
                browser.close()
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


def _edge_distance(pts: np.ndarray, poly: np.ndarray) -> float:
    """The smallest distance from any of ``pts`` (n, 2) to an edge of the closed ``poly``."""
    best = np.inf
    for p, q in zip(poly, np.roll(poly, -1, axis=0), strict=True):
        d = q - p
        t = np.clip(((pts - p) @ d) / max(float(d @ d), 1e-12), 0, 1)
        best = min(best, float(np.linalg.norm(pts - (p + t[:, None] * d), axis=1).min()))
    return best


def _polygon_clear_of_points(pts: np.ndarray, centre: np.ndarray, shape: np.ndarray):
    """``shape`` (vertices around 0) scaled about ``centre`` until every point is more than 2
    px from its edges (so that no rounding decides whether a point is inside), rounded to whole
    pixels; and the points inside it, by matplotlib's own test (independent of the page's)."""
    from matplotlib.path import Path as Polygon

    for size in range(90, 220, 3):
        poly = np.round(centre + shape * size)
        if _edge_distance(pts, poly) > 2:
            break
    inside = np.flatnonzero(Polygon(poly).contains_points(pts)).tolist()
    return poly, inside


def _drag(page, box, path, steps=3):
    page.mouse.move(box["x"] + path[0][0], box["y"] + path[0][1])
    page.mouse.down()
    for cx, cy in path[1:]:
        page.mouse.move(box["x"] + cx, box["y"] + cy, steps=steps)
    page.mouse.up()


@web
def test_page_in_a_real_browser(grey, grey_run, tmp_path):
    with in_chromium(grey_run, tmp_path) as (page, url):
        errors: list[str] = []
        requests: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("request", lambda r: requests.append(r.url))
        page.goto(url)
        ready = "() => window.explorer.ready && window.explorer.idle()"
        page.wait_for_function(ready, timeout=60000)
        before = np.array(page.evaluate("explorer.pixels('gen-img')"))

        # move z1 with the keyboard: the image is re-rendered, and is the generator's
        page.focus("#z1-slider")
        for _ in range(5):
            page.keyboard.press("ArrowRight")
        page.keyboard.press("End")
        page.wait_for_function(ready, timeout=15000)
        z = [float(page.input_value(f"#z{k}-slider")) for k in (1, 2)]
        assert z[0] == pytest.approx(float(page.get_attribute("#z1-slider", "max")))
        after = np.array(page.evaluate("explorer.pixels('gen-img')"))
        assert np.abs(after - before).mean() > 1.0  # it changed
        want = grey.render([z], [0.0], [[0.0, 0.0]])[0]
        rgba = after.reshape(16, 16, 4)
        assert np.abs(rgba[..., 0].astype(int) - to_pixels(want, *grey.contrast)).max() <= 1

        # the scatter draws every particle where its two columns put it
        page.locator("#scatter-panel").scroll_into_view_if_needed()
        pts = np.array(page.evaluate("explorer.screenPoints()"), dtype=float)
        box = page.locator("#scatter").bounding_box()
        assert box is not None and pts.shape == (60, 2)
        assert page.evaluate("explorer.display()") == "points"  # 60 points: no density
        z1, z2 = grey.table["z1"].to_numpy(), grey.table["z2"].to_numpy()
        assert np.corrcoef(pts[:, 0], z1)[0, 1] > 0.999  # x right, y up
        assert np.corrcoef(pts[:, 1], z2)[0, 1] < -0.999

        # click the particle farthest from any other: its image is shown
        gaps = np.linalg.norm(pts[:, None] - pts[None], axis=-1) + np.eye(len(pts)) * 1e9
        k = int(gaps.min(1).argmax())
        page.mouse.click(box["x"] + pts[k, 0], box["y"] + pts[k, 1])
        page.wait_for_selector(f"#particle-panel[data-index='{k}']", timeout=15000)
        assert grey.table["image"][k] in page.inner_text("#particle-name")
        shown = np.array(page.evaluate("explorer.pixels('observed-img')")).reshape(16, 16, 4)
        obs = grey.particles().images(np.array([k]))[0].numpy()
        assert np.abs(shown[..., 0].astype(int) - to_pixels(obs, *contrast(obs))).max() <= 1

        # a box around the middle of the cloud selects the points inside it
        centre = np.median(pts, axis=0)
        square = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], float)
        corners, inside = _polygon_clear_of_points(pts, centre, square)
        assert inside
        _drag(page, box, [corners[0], (centre[0], corners[2][1]), corners[2]], steps=4)
        assert page.evaluate("explorer.selected()") == inside
        assert page.inner_text("#selected-count") == f"{len(inside)} of 60 selected"

        # a lasso: a pentagon, the points inside it computed here (matplotlib)
        page.check("input[name=mode][value=lasso]")
        turn = np.linspace(0, 2 * np.pi, 6)[:-1] + 0.3
        pentagon = np.stack([np.cos(turn), np.sin(turn)], 1) * 0.8
        poly, in_lasso = _polygon_clear_of_points(pts, centre + [6, -4], pentagon)
        assert in_lasso and in_lasso != list(range(60))
        _drag(page, box, [*poly, poly[0]], steps=5)
        assert page.evaluate("explorer.selected()") == in_lasso
        # the density view (drawn for many points; asked for here) selects the same
        page.select_option("#display", "density")
        page.wait_for_function("() => explorer.display() === 'density'", timeout=5000)
        _drag(page, box, [*poly, poly[0]], steps=5)
        assert page.evaluate("explorer.selected()") == in_lasso
        page.select_option("#display", "auto")

        # "save selection" and "save the rest": the two files split the particles
        page.fill("#selection-name", "middle")
        page.click("#save-selection")
        page.wait_for_selector("#selection-status[data-saved='1']", timeout=15000)
        assert page.get_attribute("#selection-status", "data-count") == str(len(in_lasso))
        page.fill("#selection-name", "others")
        page.click("#save-rest")
        page.wait_for_selector("#selection-status[data-saved='2']", timeout=15000)
        assert page.get_attribute("#selection-status", "data-count") == str(60 - len(in_lasso))

        # the wheel zooms in: the axes follow, and a lasso still selects what it encloses
        page.check("input[name=mode][value=pan]")
        page.mouse.move(box["x"] + centre[0], box["y"] + centre[1])
        page.mouse.wheel(0, -300)
        page.wait_for_timeout(500)
        page.check("input[name=mode][value=lasso]")
        zoomed = np.array(page.evaluate("explorer.screenPoints()"), dtype=float)
        spread = np.ptp(zoomed[in_lasso], axis=0).max() / np.ptp(pts[in_lasso], axis=0).max()
        assert spread > 1.2, spread  # zoomed in
        visible = np.all((zoomed > 0) & (zoomed < [box["width"], box["height"]]), axis=1)
        middle = np.median(zoomed[visible], axis=0)
        poly, in_zoomed = _polygon_clear_of_points(zoomed, middle, pentagon * 0.6)
        _drag(page, box, [*poly, poly[0]], steps=5)
        assert page.evaluate("explorer.selected()") == in_zoomed

        # hovering a point names it
        gaps = np.linalg.norm(zoomed[:, None] - zoomed[None], axis=-1) + np.eye(60) * 1e9
        j = int(np.where(visible, gaps.min(1), -1).argmax())
        page.mouse.move(box["x"] + zoomed[j, 0] + 1, box["y"] + zoomed[j, 1])
        page.mouse.move(box["x"] + zoomed[j, 0], box["y"] + zoomed[j, 1])
        page.wait_for_selector(f"#tooltip[data-index='{j}']", timeout=5000)
        assert page.inner_text("#tooltip").startswith(f"#{j}: z1 ")
        page.screenshot(path=str(tmp_path / "explore.png"), full_page=True)
        assert not errors, errors
        origin = url.rstrip("/")
        assert all(r.startswith(origin) for r in requests), requests  # nothing from outside
    for name, rows in (("middle", in_lasso), ("others", sorted(set(range(60)) - set(in_lasso)))):
        written = tmp_path / "selections" / f"{name}.txt"
        want = np.sort(grey.table["input_row"].to_numpy()[rows])
        assert np.array_equal(read_indices(written, 60), want)
    r = runner.invoke(
        cli, ["select", str(grey_run), "--indices", str(written), "-o", str(tmp_path / "s")]
    )
    assert r.exit_code == 0, r.output
    assert (tmp_path / "explore.png").stat().st_size > 10_000


@web
def test_histogram_of_1d_z_in_a_real_browser(tmp_path):
    """A 1-D z run: the page shows z1's histogram; a drag over it selects the particles whose
    z1 lies in the dragged range (computed here from the table), a click sets the z1 slider."""
    stack = write_simulation(tmp_path / "sim", n=60, size=16, snr=5.0, shift_std_px=0.5, seed=4)
    run = tmp_path / "one"
    r = runner.invoke(cli, ["fit", str(stack), "-o", str(run), "--zdim", "1", *FIT])
    assert r.exit_code == 0, r.output
    z = Run.open(run).table()["z1"].to_numpy(np.float32).astype(np.float64)
    with in_chromium(run, tmp_path) as (page, url):
        page.goto(url)
        page.wait_for_function("() => window.explorer.ready", timeout=60000)
        hist = page.locator("#histogram")
        assert hist.is_visible()
        hist.scroll_into_view_if_needed()
        box = hist.bounding_box()
        assert box is not None
        meta = page.evaluate("explorer.state.meta.z[0]")
        left, right = 56, box["width"] - 12

        def z_at(px: float) -> float:
            return meta["min"] + (px - left) / (right - left) * (meta["max"] - meta["min"])

        # drag ends clear of every particle's z1 (no rounding decides)
        xs = [
            float(px)
            for px in np.arange(left + 5, right - 5)
            if np.abs(z - z_at(px)).min() > 0.01 * (meta["max"] - meta["min"])
        ]
        a = next(px for px in xs if (z < z_at(px)).sum() >= 10)
        b = next(px for px in reversed(xs) if (z > z_at(px)).sum() >= 10)
        want = np.flatnonzero((z >= z_at(a)) & (z <= z_at(b))).tolist()
        assert 0 < len(want) < 60
        page.mouse.move(box["x"] + a, box["y"] + 60)
        page.mouse.down()
        page.mouse.move(box["x"] + b, box["y"] + 60, steps=4)
        page.mouse.up()
        assert page.evaluate("explorer.selected()") == want
        # a click: the z1 slider goes to that z
        page.mouse.click(box["x"] + a, box["y"] + 60)
        page.wait_for_function("() => window.explorer.idle()", timeout=15000)
        step = (meta["max"] - meta["min"]) / 1000
        assert float(page.input_value("#z1-slider")) == pytest.approx(z_at(a), abs=step)
