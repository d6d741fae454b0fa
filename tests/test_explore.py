"""emvae explore (the web app, its API and the page in a real browser) and emvae export-onnx."""

from __future__ import annotations

import base64
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
from emvae.explore import Batcher, Explorer, make_app, to_pixels
from emvae.geometry import image_to_model_pose
from emvae.io import read_indices
from emvae.models import SpatialVAE, pixels_to_images
from emvae.montage import contrast, decode_mean
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


def _client(run: Path, tmp_path: Path):
    return TestClient(make_app(run, "cpu", out_dir=tmp_path / "selections"))


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
    import emvae.explore as explore

    served = {}
    monkeypatch.setattr(explore, "serve", lambda app, host, port: served.update(h=host, p=port))
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


@pytest.fixture
def live(grey_run, tmp_path):
    """The app served by uvicorn on a free local port, in a thread."""
    uvicorn = pytest.importorskip("uvicorn", reason="the browser test needs uvicorn")
    app = make_app(grey_run, "cpu", out_dir=tmp_path / "selections")
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
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
    yield f"http://127.0.0.1:{port}/", app
    server.should_exit = True
    thread.join(10)
    sock.close()


@web
def test_page_in_a_real_browser(live, grey, grey_run, tmp_path):
    chromium = _chromium()
    if chromium is None:
        pytest.skip("no Chromium (apt-get install chromium; .ci/run installs it)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright")
    url, app = live
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(url)
            ready = "() => window.explorer.ready && window.explorer.idle()"
            page.wait_for_function(ready, timeout=15000)
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

            # click the particle farthest from any other: its image is shown
            pts = np.array(page.evaluate("explorer.screenPoints()"), dtype=float)
            gaps = np.linalg.norm(pts[:, None] - pts[None], axis=-1) + np.eye(len(pts)) * 1e9
            k = int(gaps.min(1).argmax())
            box = page.locator("#scatter").bounding_box()
            assert box is not None
            scale = box["width"] / 520
            page.mouse.click(box["x"] + pts[k, 0] * scale, box["y"] + pts[k, 1] * scale)
            page.wait_for_selector(f"#particle-panel[data-index='{k}']", timeout=15000)
            assert grey.table["image"][k] in page.inner_text("#particle-name")
            shown = np.array(page.evaluate("explorer.pixels('observed-img')")).reshape(16, 16, 4)
            obs = grey.particles().images(np.array([k]))[0].numpy()
            assert np.abs(shown[..., 0].astype(int) - to_pixels(obs, *contrast(obs))).max() <= 1

            # a box around the middle of the cloud selects the points inside it
            centre = np.median(pts, axis=0)
            for half in range(90, 200, 3):  # edges clear of every point: no rounding at play
                a, b = np.round(centre - half), np.round(centre + half)
                if np.abs(np.concatenate([pts - a, pts - b])).min() > 2:
                    break
            inside = np.flatnonzero(np.all((pts >= a) & (pts <= b), axis=1)).tolist()
            assert inside
            page.mouse.move(box["x"] + a[0] * scale, box["y"] + a[1] * scale)
            page.mouse.down()
            page.mouse.move(box["x"] + centre[0] * scale, box["y"] + b[1] * scale, steps=4)
            page.mouse.move(box["x"] + b[0] * scale, box["y"] + b[1] * scale, steps=4)
            page.mouse.up()
            assert page.evaluate("explorer.selected()") == inside
            assert page.inner_text("#selected-count") == f"{len(inside)} of 60 selected"

            # the same region with the lasso
            page.check("input[name=mode][value=lasso]")
            corners = [a, (b[0], a[1]), b, (a[0], b[1]), a]
            page.mouse.move(box["x"] + a[0] * scale, box["y"] + a[1] * scale)
            page.mouse.down()
            for cx, cy in corners[1:]:
                page.mouse.move(box["x"] + cx * scale, box["y"] + cy * scale, steps=3)
            page.mouse.up()
            assert page.evaluate("explorer.selected()") == inside

            page.fill("#selection-name", "middle")
            page.click("#save-selection")
            page.wait_for_selector("#selection-status[data-count]", timeout=15000)
            assert page.get_attribute("#selection-status", "data-count") == str(len(inside))
            page.screenshot(path=str(tmp_path / "explore.png"), full_page=True)
            assert not errors, errors
        finally:
            browser.close()
    written = tmp_path / "selections" / "middle.txt"
    rows = np.sort(grey.table["input_row"].to_numpy()[inside])
    assert np.array_equal(read_indices(written, 60), rows)
    r = runner.invoke(
        cli, ["select", str(grey_run), "--indices", str(written), "-o", str(tmp_path / "s")]
    )
    assert r.exit_code == 0, r.output
    assert (tmp_path / "explore.png").stat().st_size > 10_000
