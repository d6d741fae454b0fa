"""``emvae bench gpu`` in its ``--tiny --device cpu`` form: the check a lent GPU runs first
must not rot between the sessions that have one. The figures of a tiny CPU run mean nothing;
what is checked is that every section runs, writes well-formed JSON lines and a markdown table
as it goes, and that the numbers are sensible (positive, finite, FLOPs by the formula)."""

from __future__ import annotations

import json
import math

import pytest
from conftest import runner
from emvae_cli.main import app

from emvae import gpucheck
from emvae.config import ModelConfig
from emvae.gpucheck import JSONL, MARKDOWN, SECTIONS, Plan, run_gpu_check

# torchrun launches two fits in fresh interpreters (about 20 s): its own test, below
QUICK = tuple(s for s in SECTIONS if s != "torchrun")


def _formula(cfg: ModelConfig, pixels: int) -> float:
    """Generator FLOPs of one training step per image, written out again: 3 x k x (per pixel:
    Fourier features 2 -> F, first layer (2 + 2F) -> H, (L - 1) H x H layers, H -> O; per
    image: z's K -> H)."""
    h, n_layers, f = cfg.gen_hidden, cfg.gen_layers, cfg.fourier_features
    assert h is not None and n_layers is not None
    forward = (
        pixels * (4 * f + 2 * (2 + 2 * f) * h + 2 * (n_layers - 1) * h * h + 2 * h * cfg.n_out)
        + 2 * cfg.zdim * h
    )
    k = cfg.hypotheses if cfg.binned else 1
    return 3 * k * forward


@pytest.fixture(scope="module")
def tiny_check(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu")
    rows = run_gpu_check(out, "cpu", tiny=True, sections=QUICK, log=lambda s: None)
    return out, rows


def test_every_section_writes_well_formed_lines(tiny_check):
    out, rows = tiny_check
    lines = (out / JSONL).read_text().splitlines()
    assert [json.loads(line) for line in lines] == json.loads(json.dumps(rows))
    status = {r["section"]: r["status"] for r in rows if "status" in r}
    assert status == {s: "done" for s in QUICK}
    assert not [r for r in rows if "error" in r]
    env = next(r for r in rows if r["section"] == "env")
    assert env["tiny"] is True and env["torch"]
    mm = next(r for r in rows if r["section"] == "matmul")
    assert mm["tflop_per_s"] > 0 and math.isfinite(mm["tflop_per_s"])


def test_step_rates_are_sensible_and_flops_follow_the_formula(tiny_check):
    _, rows = tiny_check
    plan = Plan.make(tiny=True)
    steps = [r for r in rows if r["section"] == "steps" and "images_per_s" in r]
    # each configuration x precision at batch 100's stand-in, and at its largest batch
    assert len(steps) == 2 * len(plan.configs) * len(plan.precisions)
    options = {label: (opts, render) for label, opts, render in plan.configs}
    for r in steps:
        assert r["images_per_s"] > 0 and math.isfinite(r["images_per_s"]) and r["finite"]
        assert r["step_ms"] == pytest.approx(1e3 * r["batch"] / r["images_per_s"])
        opts, render = options[r["config"]]
        cfg = ModelConfig(**opts)
        stage = render or cfg.image_size
        assert r["stage_px"] == stage and r["image_px"] == cfg.image_size
        assert r["generator_flop_per_image"] == pytest.approx(_formula(cfg, stage * stage))
        expect = r["generator_flop_per_image"] * r["images_per_s"] / 1e12
        assert r["generator_tflop_per_s"] == pytest.approx(expect)
        assert 0 < r["fraction_of_bf16_peak"] and r["passes"] >= 1
        if r["precision"] == "fp32" and not r.get("largest_batch"):
            assert r["host_syncs_in_step"] == 0  # the step never waits for the device
    largest = [r for r in steps if r.get("largest_batch")]
    assert {r["batch"] for r in largest} == {plan.max_batch}
    assert all(r["passes"] == 1 for r in largest)


def test_reader_and_time_to_result_rows(tiny_check):
    _, rows = tiny_check
    plan = Plan.make(tiny=True)
    loader = [r for r in rows if r["section"] == "loader" and "reader" in r]
    assert len(loader) == len(plan.loader_workers)
    for r in loader:
        assert r["images_per_s"] > 0 and r["step_consumes_images_per_s"]
    ttr = [r for r in rows if r["section"] == "time_to_result" and "epoch" in r]
    assert [r["epoch"] for r in ttr] == list(range(1, plan.ttr_epochs + 1))
    assert ttr[0]["particles"] == plan.ttr_n
    assert all(0 < a["seconds"] < b["seconds"] for a, b in zip(ttr, ttr[1:], strict=False))
    for r in ttr:
        assert 0 <= r["theta_circ_corr"] <= 1 and 0 <= r["z_conformation_pearson"] <= 1


def test_the_markdown_table_has_a_row_per_result(tiny_check):
    out, rows = tiny_check
    text = (out / MARKDOWN).read_text()
    assert "TINY SMOKE RUN" in text
    assert "| config | stage px | precision | batch |" in text
    steps = [r for r in rows if r["section"] == "steps" and "images_per_s" in r]
    for r in steps:
        assert f"| {r['config']} | {r['stage_px']} | {r['precision']} |" in text
    table = [line for line in text.splitlines() if line.startswith("| tiny ")]
    assert len(table) == len(steps)
    assert "## Streaming reader" in text and "## Time to result" in text


def test_a_section_out_of_time_or_failing_leaves_the_others_running(tmp_path, monkeypatch):
    plan = Plan.make(tiny=True)
    plan.budgets["steps"] = 0.0

    def broken(*args):
        raise RuntimeError("no reader today")

    monkeypatch.setattr(gpucheck, "_matmul", broken)
    rows = run_gpu_check(
        tmp_path, "cpu", sections=("matmul", "steps", "env"), plan=plan, log=lambda s: None
    )
    status = {r["section"]: r.get("status") for r in rows if "status" in r}
    assert status == {"matmul": "failed", "steps": "out of time", "env": "done"}
    assert any("no reader today" in r.get("error", "") for r in rows)
    assert "| matmul | error: RuntimeError: no reader today |" in (tmp_path / MARKDOWN).read_text()


def test_the_command_refuses_unknown_sections_and_runs_one(tmp_path):
    bad = runner.invoke(app, ["bench", "gpu", "-o", str(tmp_path), "--sections", "env,warp"])
    assert bad.exit_code != 0 and "warp" in bad.output
    ok = runner.invoke(
        app, ["bench", "gpu", "-o", str(tmp_path), "--tiny", "--device", "cpu", "--sections", "env"]
    )
    assert ok.exit_code == 0, ok.output
    assert json.loads((tmp_path / JSONL).read_text().splitlines()[0])["section"] == "env"


def test_emvae_ddp_gives_one_torchrun_process_a_group(monkeypatch):
    """What the torchrun section compares: with EMVAE_DDP=1 a single process under torchrun
    starts its process group and counts as distributed (fit then wraps the model in DDP);
    without it, or outside torchrun, it stays a plain single process."""
    import torch.distributed as dist

    from emvae.distributed import SINGLE, from_env

    assert from_env("cpu") is SINGLE  # no torchrun variables
    env = {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1"}
    env["MASTER_PORT"] = "29531"
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert from_env("cpu") is SINGLE  # torchrun, one process, not asked
    monkeypatch.setenv("EMVAE_DDP", "1")
    try:
        ctx = from_env("cpu")
        assert ctx.active and ctx.grouped and ctx.world == 1 and ctx.main
        assert dist.is_initialized() and dist.get_backend() == "gloo"
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def test_the_torchrun_section_runs_both_launchers(tmp_path):
    """A plain fit and ``torchrun --nproc_per_node 1`` (gloo on a CPU) both finish and write
    a table of every particle; with --tiny no section has a time limit (an infinite budget
    once broke the launch)."""
    rows = run_gpu_check(tmp_path, "cpu", tiny=True, sections=("torchrun",), log=lambda s: None)
    runs = [r for r in rows if r["section"] == "torchrun" and "launcher" in r]
    assert [r["launcher"] for r in runs] == ["plain", "torchrun --nproc_per_node 1"]
    plan = Plan.make(tiny=True)
    for r in runs:
        assert r["exit_code"] == 0, r.get("error")
        assert r["particles"] == plan.torchrun_n and r["epoch_seconds"] > 0
