"""emvae explore on a run fitted with ``--classes 2``: the scatter's class column and filter, the
generator drawn as a given class (what ``model.decode(..., classes=)`` draws), the particle's
rendering as its own class, selections within the classes shown, and the page in a browser."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import runner
from emvae_cli.main import app as cli
from test_explore import _client, _png, in_chromium, web

from emvae.explore import Explorer, to_pixels
from emvae.geometry import image_to_model_pose
from emvae.io import read_indices
from emvae.models import pixels_to_images
from emvae.montage import decode_mean, traversals
from emvae.objective import pixel_mean
from emvae.run import Run
from emvae.simulate import class_objects, write_simulation

# 120 particles of two molecules (hinge, clamp), 4 epochs: both classes keep particles
BASE = ["--zdim", "2", "--gen-hidden", "16", "--enc-hidden", "16", "-n", "4", "-b", "20"]
BASE += ["--lr", "3e-3", "--device", "cpu", "-q"]
FIT = [*BASE, "--classes", "2"]


@pytest.fixture(scope="module")
def class_run(tmp_path_factory) -> Path:
    """A tiny run fitted with --classes 2 on 120 simulated 16-px particles of two molecules."""
    root = tmp_path_factory.mktemp("explore_classes")
    stack = write_simulation(
        root / "sim",
        n=120,
        size=16,
        snr=5.0,
        shift_std_px=0.5,
        seed=4,
        obj=class_objects("hinge", 0, 2),
    )
    out = root / "classes"
    r = runner.invoke(cli, ["fit", str(stack), "-o", str(out), *FIT])
    assert r.exit_code == 0, r.output
    counts = Run.open(out).table()["class"].value_counts()
    assert set(counts.index) == {1, 2}, counts  # not vacuous: both classes hold particles
    return out


@pytest.fixture(scope="module")
def ex(class_run) -> Explorer:
    return Explorer(Run.open(class_run), "cpu")


def _decoded(model, z, theta_deg, shift_px, classes) -> np.ndarray:
    """What the model draws: ``decode(z, pose, classes=)`` (0-based classes) at the table's
    image-frame pose, as pixel means ``(B, C, D, D)``."""
    theta, dx = image_to_model_pose(torch.tensor(theta_deg), torch.tensor(shift_px), 16)
    pose = torch.zeros(len(z), model.transform.n_params)
    pose[:, 0], pose[:, 1:3] = theta, dx
    with torch.no_grad():
        params = model.decode(torch.tensor(z), pose, full=True, classes=torch.tensor(classes))
    return pixels_to_images(pixel_mean(model.config, params), 16).numpy()


# ----------------------------------------------------------------------------- the library


@web
def test_class_run_loads_with_its_class_column_and_counts(ex, class_run, tmp_path):
    client = _client(class_run, tmp_path)
    name = class_run.name
    table = ex.table
    meta = client.get(f"/api/runs/{name}").json()
    assert meta["default_colour"] == "class"
    assert [c["class"] for c in meta["classes"]] == [1, 2]
    for c in meta["classes"]:
        mine = table[table["class"] == c["class"]]
        assert c["count"] == len(mine) and c["share"] == pytest.approx(len(mine) / len(table))
        assert np.allclose(c["z"], mine[["z1", "z2"]].median().to_numpy(), atol=1e-6)
    # the page's class column is the table's, as is its colouring
    a = np.frombuffer(client.get(f"/api/runs/{name}/arrays/class").content, "<f4")
    assert np.array_equal(a, table["class"].to_numpy(np.float32))
    c = client.get(f"/api/runs/{name}/colours/class").json()
    assert c["kind"] == "category" and c["labels"] == [1, 2]
    assert [c["labels"][k] for k in c["codes"]] == table["class"].tolist()
    assert c["counts"] == [int((table["class"] == k).sum()) for k in (1, 2)]
    p = client.get(f"/api/runs/{name}/arrays/class_prob").content
    assert np.array_equal(np.frombuffer(p, "<f4"), table["class_prob"].to_numpy(np.float32))


@web
def test_a_rendering_of_class_2_is_the_models_decode_of_class_2(ex, class_run, tmp_path):
    """The generator at (z, theta, shift) as class 2 is decode(..., classes=1 (0-based)) at
    that pose, and not class 1's; a batch of mixed classes draws each as its own."""
    client = _client(class_run, tmp_path)
    table = ex.table
    two = int(np.flatnonzero(table["class"] == 2)[0])
    z = [table.loc[two, ["z1", "z2"]].to_list()] * 2
    theta, shift = [0.0, 40.0], [[0.0, 0.0], [1.0, -0.5]]
    body = {"z": z, "theta_deg": theta, "shift_px": shift, "raw": True}
    got2 = np.array(
        client.post(f"/api/runs/{class_run.name}/generate", json={**body, "class": 2}).json()[
            "values"
        ]
    )
    got1 = np.array(
        client.post(f"/api/runs/{class_run.name}/generate", json={**body, "class": [1, 1]}).json()[
            "values"
        ]
    )
    want2 = _decoded(ex.model, z, theta, shift, [1, 1])
    want1 = _decoded(ex.model, z, theta, shift, [0, 0])
    assert np.abs(got2 - want2).max() < 1e-5 and np.abs(got1 - want1).max() < 1e-5
    assert np.abs(got2 - got1).mean() > 10 * np.abs(got2 - want2).max() + 1e-3  # classes differ
    mixed = ex.render(z, theta, shift, [2, 1])
    assert np.abs(mixed[0] - want2[0]).max() < 1e-5 and np.abs(mixed[1] - want1[1]).max() < 1e-5
    # the PNG is the values on the generator's one display range (every class shares it)
    out = client.post(f"/api/runs/{class_run.name}/generate", json={"z": z[0], "class": 2})
    assert np.array_equal(_png(out.json()["images"][0]), to_pixels(want2[0], *ex.contrast))


def test_the_walk_of_a_class_is_its_montage_traversal(ex):
    """Each class's walk along z_d spans its particles' 2nd to 98th percentile of z_d and, from
    the class's median z, draws what emvae montage draws as that class's traversal."""
    table = ex.table
    summary = ex.class_summary()
    for d, r in enumerate(ex.meta()["z"]):
        assert np.allclose(r["walk"], np.quantile(table[f"z{d + 1}"], [0.02, 0.98]))
    for c in (1, 2):
        zc = table.loc[table["class"] == c, ["z1", "z2"]].to_numpy(np.float64)
        s = summary[c - 1]
        assert np.allclose(s["walk"], np.quantile(zc, [0.02, 0.98], axis=0).T)
        assert np.allclose(s["z"], np.median(zc, axis=0))
        for d in (0, 1):
            rows = np.tile(s["z"], (9, 1))
            rows[:, d] = np.linspace(*s["walk"][d], 9)
            walk = ex.render(rows, np.zeros(9), np.zeros((9, 2)), c)
            with torch.no_grad(), ex.model.rendering_class(c - 1):
                montage = traversals(ex.model, 9, dims=[d], z_data=zc)[0].numpy()
            assert np.abs(walk - montage).max() < 1e-5
        other = ex.render(rows, np.zeros(9), np.zeros((9, 2)), 3 - c)
        assert np.abs(other - walk).mean() > 1e-3  # each class its own walk


@web
def test_a_particle_is_drawn_as_its_class(ex, class_run, tmp_path):
    """The particle panel's pose-free rendering is the generator at the particle's z as the
    table's class; its reconstruction is decoded as that (the most probable) class."""
    client = _client(class_run, tmp_path)
    table = ex.table
    for c in (1, 2):
        k = int(np.flatnonzero(table["class"] == c)[0])
        p = client.get(f"/api/runs/{class_run.name}/particles/{k}").json()
        assert p["class"] == c == p["row"]["class"]
        images = ex.particle_images(k)
        assert images["class"].tolist() == [c]
        z = torch.tensor([p["z"]])
        mine = decode_mean(ex.model, z, torch.tensor([c - 1]))[0].numpy()
        other = decode_mean(ex.model, z, torch.tensor([2 - c]))[0].numpy()
        assert np.abs(images["generator"] - mine).max() < 1e-5
        assert np.abs(images["generator"] - other).mean() > 1e-3
        assert np.array_equal(_png(p["generator"]), to_pixels(mine, *ex.contrast))
        with torch.no_grad():
            x = ex.particles().images(np.array([k]))
            q = ex.model.encode(x)
            assert int(q.best_class()[0]) == c - 1
            params = ex.model.decode(q.z_mu, q.pose_mu, full=True, classes=torch.tensor([c - 1]))
        recon = pixels_to_images(pixel_mean(ex.model.config, params), 16)[0].numpy()
        assert np.abs(images["reconstruction"] - recon).max() < 1e-5


@web
def test_the_class_filter_returns_only_that_class(ex, class_run, tmp_path):
    client = _client(class_run, tmp_path)
    table = ex.table
    url = f"/api/runs/{class_run.name}/points"
    for c in (1, 2):
        mine = np.flatnonzero(table["class"] == c)
        assert np.array_equal(ex.class_positions([c]), mine)
        r = client.get(url, params={"x": "z1", "y": "z2", "colour": "class", "class": c}).json()
        assert r["index"] == mine.tolist()
        assert np.allclose(r["x"], table["z1"].to_numpy()[mine])
        assert np.allclose(r["y"], table["z2"].to_numpy()[mine])
        assert {r["colour"]["labels"][k] for k in r["colour"]["codes"]} == {c}
    both = client.get(url, params={"x": "z1", "y": "z2", "class": [1, 2]}).json()
    assert both["index"] == list(range(len(table)))
    whole = client.get(url, params={"x": "z1", "y": "z2"}).json()
    assert "index" not in whole and np.allclose(whole["x"], table["z1"])  # as without classes
    r = client.get(url, params={"x": "z1", "y": "z2", "class": 3})
    assert r.status_code == 404 and "classes 1..2" in r.json()["detail"]


@web
def test_selections_respect_the_classes_shown(ex, class_run, tmp_path):
    """A selection made under a class filter holds only that class's particles, and "the rest"
    is the rest of that class: the two split the class, as emvae select --query reads it."""
    client = _client(class_run, tmp_path)
    table = ex.table
    url = f"/api/runs/{class_run.name}/selections"
    two = np.flatnonzero(table["class"] == 2)
    picked = two[::3].tolist()
    sel = client.post(url, json={"indices": picked, "name": "two", "classes": [2]}).json()
    rest = client.post(url, json={"indices": picked, "rest": True, "classes": [2]}).json()
    rows = table["input_row"].to_numpy()
    assert sel["input_rows"] == np.sort(rows[picked]).tolist()
    others = sorted(set(two.tolist()) - set(picked))
    assert rest["count"] == len(others) and rest["input_rows"] == np.sort(rows[others]).tolist()
    both = np.concatenate(
        [read_indices(Path(p), len(table)) for p in (sel["paths"][0], rest["paths"][0])]
    )
    assert sorted(both.tolist()) == sorted(rows[two].tolist())  # exactly class 2
    everything = client.post(url, json={"indices": picked, "rest": True}).json()
    assert everything["count"] == len(table) - len(picked)  # without classes: as today
    one = int(np.flatnonzero(table["class"] == 1)[0])
    r = client.post(url, json={"indices": [one], "classes": [2]})
    assert r.status_code == 400 and f"particle {one} is of class 1" in r.json()["detail"]
    r = client.post(url, json={"indices": two.tolist(), "rest": True, "classes": [2]})
    assert r.status_code == 400 and "the rest is empty" in r.json()["detail"]
    sub = tmp_path / "sub"
    r = runner.invoke(cli, ["select", str(class_run), "--query", "class == 2", "-o", str(sub)])
    assert r.exit_code == 0, r.output
    assert np.loadtxt(sub.with_suffix(".txt"), dtype=int).tolist() == sorted(rows[two].tolist())


@web
def test_class_requests_that_cannot_be_drawn_are_4xx(class_run, tmp_path):
    client = _client(class_run, tmp_path, raise_server_exceptions=False)
    url = f"/api/runs/{class_run.name}/generate"
    cases = [
        ({"z": [0, 0]}, 400, "2 classes: say which"),
        ({"z": [0, 0], "class": 0}, 404, "classes 1..2"),
        ({"z": [0, 0], "class": 3}, 404, "classes 1..2"),
        ({"z": [0, 0], "class": 1.5}, 400, "whole numbers"),
        ({"z": [[0, 0]] * 3, "class": [1, 2]}, 400, "class has 2 rows"),
        ({"z": [0, 0], "class": "a"}, 422, ""),
    ]
    for body, status, text in cases:
        r = client.post(url, json=body)
        assert r.status_code == status, (body, r.text)
        assert text in str(r.json()["detail"]), (body, r.text)
    assert client.post(url, json={"z": [0, 0], "class": 2}).status_code == 200


@web
def test_a_run_without_classes_is_class_1_only(tmp_path):
    """A one-class run: no class menu (meta's classes empty), its renderings as before;
    class 1 is every particle and means the same rendering, another class is a 404."""
    stack = write_simulation(tmp_path / "sim", n=30, size=16, snr=5.0, seed=2)
    run = tmp_path / "one"
    r = runner.invoke(cli, ["fit", str(stack), "-o", str(run), *BASE])
    assert r.exit_code == 0, r.output
    client = _client(run, tmp_path)
    meta = client.get(f"/api/runs/{run.name}").json()
    assert meta["classes"] == [] and meta["default_colour"] == "elbo"
    url = f"/api/runs/{run.name}/generate"
    plain = client.post(url, json={"z": [0.2, -0.1], "raw": True}).json()
    one = client.post(url, json={"z": [0.2, -0.1], "class": 1, "raw": True}).json()
    assert plain == one
    r = client.post(url, json={"z": [0.2, -0.1], "class": 2})
    assert r.status_code == 404 and "without --classes" in r.json()["detail"]
    assert "class" not in client.get(f"/api/runs/{run.name}/particles/3").json()


# ----------------------------------------------------------------------------- the browser


@web
def test_class_run_in_a_real_browser(ex, class_run, tmp_path):
    """The page of a --classes 2 run: points coloured by class, the class filter hides class 1
    (a box over everything then selects class 2 only, and "save the rest" is class 2's rest),
    the generator's class menu redraws the same z as the other class, a click on a particle
    shows it drawn as its class and "use the particle's z and class" takes both."""
    table = ex.table
    cls = table["class"].to_numpy()
    n = len(table)
    with in_chromium(class_run, tmp_path) as (page, url):
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(url)
        ready = "() => window.explorer.ready && window.explorer.idle()"
        page.wait_for_function(ready, timeout=60000)
        assert page.input_value("#colour") == "class"
        assert page.is_visible("#class-filter") and page.is_visible("#gen-class")
        legend = page.inner_text("#legend")
        assert f"1 ({(cls == 1).sum()})" in legend and f"2 ({(cls == 2).sum()})" in legend

        # the generator: the largest class at its particles' median z, then the other class
        big = 1 if (cls == 1).sum() > (cls == 2).sum() else 2
        assert page.input_value("#gen-class") == str(big)
        z = [float(page.input_value(f"#z{k}-slider")) for k in (1, 2)]
        shown = np.array(page.evaluate("explorer.pixels('gen-img')")).reshape(16, 16, 4)
        want = ex.render([z], [0.0], [[0.0, 0.0]], [big])[0]
        assert np.abs(shown[..., 0].astype(int) - to_pixels(want, *ex.contrast)).max() <= 1
        page.select_option("#gen-class", str(3 - big))
        page.wait_for_function(ready, timeout=15000)
        other = np.array(page.evaluate("explorer.pixels('gen-img')")).reshape(16, 16, 4)
        want = ex.render([z], [0.0], [[0.0, 0.0]], [3 - big])[0]
        assert np.abs(other[..., 0].astype(int) - to_pixels(want, *ex.contrast)).max() <= 1
        assert np.abs(other.astype(int) - shown.astype(int)).mean() > 0.5  # it changed
        # the walk along z2 of that class: its 2nd to 98th percentile, the z1 slider's z1
        page.select_option("#walk-dim", "1")
        page.click("#walk")
        page.wait_for_selector("#walk-strip[data-drawn='1']", timeout=15000)
        page.wait_for_function(ready, timeout=15000)
        body = page.evaluate("JSON.parse(document.querySelector('#walk-strip').dataset.walk)")
        lo, hi = ex.class_summary()[2 - big]["walk"][1]
        assert body["class"] == 3 - big
        assert np.allclose(np.array(body["z"])[:, 1], np.linspace(lo, hi, 9), atol=1e-9)
        assert np.allclose(np.array(body["z"])[:, 0], z[0])
        walk = ex.render(body["z"], [0.0], [[0.0, 0.0]], [3 - big])
        for j in (0, 4, 8):
            px = np.array(page.evaluate(f"explorer.pixels('walk-{j}')")).reshape(16, 16, 4)
            want = to_pixels(walk[j], *ex.contrast)
            assert np.abs(px[..., 0].astype(int) - want).max() <= 1

        # the class filter: class 1 hidden; a box over the whole plot selects class 2 only
        page.locator("#scatter-panel").scroll_into_view_if_needed()
        page.uncheck("#class-1")
        page.wait_for_function("() => document.querySelector('#plot').dataset.classes === '2'")
        pts = page.evaluate("explorer.screenPoints()")
        assert [k for k, p in enumerate(pts) if p is not None] == np.flatnonzero(cls == 2).tolist()
        box = page.locator("#scatter").bounding_box()
        assert box is not None
        page.mouse.move(box["x"] + 2, box["y"] + 2)
        page.mouse.down()
        page.mouse.move(box["x"] + box["width"] - 2, box["y"] + box["height"] - 2, steps=4)
        page.mouse.up()
        two = np.flatnonzero(cls == 2).tolist()
        assert page.evaluate("explorer.selected()") == two
        assert page.inner_text("#selected-count") == f"{len(two)} of {len(two)} selected"
        # a click on one of them: shown as its class; the generator takes its z and class
        xy = np.array([pts[i] for i in two], float)
        gaps = np.linalg.norm(xy[:, None] - xy[None], axis=-1) + np.eye(len(two)) * 1e9
        k = two[int(gaps.min(1).argmax())]
        # where the plot and the point are now: the selection may have moved the page
        box = page.locator("#scatter").bounding_box()
        assert box is not None
        x, y = page.evaluate(f"explorer.screenPoints()[{k}]")
        # the pointer over the point first: the page names it (its tooltip) before the click
        page.mouse.move(box["x"] + x, box["y"] + y, steps=2)
        page.wait_for_selector(f"#tooltip[data-index='{k}']", state="visible", timeout=15000)
        page.mouse.click(box["x"] + x, box["y"] + y)
        page.wait_for_selector(f"#particle-panel[data-index='{k}']", timeout=30000)
        assert page.inner_text("#canonical-caption").startswith("generator as class 2")
        page.click("#from-particle")
        page.wait_for_function(ready, timeout=15000)
        assert page.input_value("#gen-class") == "2"
        zk = [float(page.input_value(f"#z{j}-slider")) for j in (1, 2)]
        gen = np.array(page.evaluate("explorer.pixels('gen-img')")).reshape(16, 16, 4)
        want = ex.render([zk], [0.0], [[0.0, 0.0]], [2])[0]
        assert np.abs(gen[..., 0].astype(int) - to_pixels(want, *ex.contrast)).max() <= 1

        # save a third of class 2 and the rest: the rest is class 2's other particles
        page.check("input[name=mode][value=lasso]")
        page.click("#clear-selection")
        page.click("#select-shown")
        assert page.evaluate("explorer.selected()") == two
        page.evaluate("(keep) => explorer.select(keep)", two[::3])
        page.fill("#selection-name", "third")
        page.click("#save-selection")
        page.wait_for_selector("#selection-status[data-saved='1']", timeout=15000)
        page.fill("#selection-name", "others")
        page.click("#save-rest")
        page.wait_for_selector("#selection-status[data-saved='2']", timeout=15000)
        assert page.get_attribute("#selection-status", "data-count") == str(
            len(two) - len(two[::3])
        )
        # showing every class again keeps the selection (all of class 2)
        page.click("#all-classes")
        page.wait_for_function("() => document.querySelector('#plot').dataset.classes === '1,2'")
        assert page.evaluate("explorer.selected()") == two[::3]
        assert page.inner_text("#selected-count") == f"{len(two[::3])} of {n} selected"
        assert not errors, errors
    rows = table["input_row"].to_numpy()
    third = read_indices(tmp_path / "selections" / "third.txt", n)
    others = read_indices(tmp_path / "selections" / "others.txt", n)
    assert third.tolist() == np.sort(rows[two[::3]]).tolist()
    assert sorted([*third.tolist(), *others.tolist()]) == sorted(rows[two].tolist())
