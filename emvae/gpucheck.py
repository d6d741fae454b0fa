"""``emvae bench gpu``: the one prepared check a session lent a GPU runs first.

Sections, each with its own time budget (a slow one cannot eat the others' time), each
result appended to ``gpu_check.jsonl`` as soon as it exists and ``gpu_check.md`` rewritten
from it, so that a run killed at any point leaves what it finished:

``env``
    the device, PyTorch, CUDA, the peak memory the process may use.
``matmul``
    one large bf16 matrix product (n x n x n, 2 n^3 FLOPs): the dense bf16 rate measured on
    this device in this run, the denominator of the generator's fraction.
``steps``
    training-step images/s (augmentation, encoder, generator, ELBO, backward, Adam: emvae's
    own :func:`emvae.train.training_step`) for fit's defaults at 64 and 128 px, at the
    full-size stage and at the 32-px coarse stage (the encoder sees its 32-px copy in both),
    and for the paper's ``em`` configuration (40 px, 2 x 1000); in fp32, TF32 and bf16
    autocast; at batch 100 with fit's pass memory (``TrainConfig.pass_memory_mb``), and in
    one pass at the largest batch that fits (doubling from 100 until CUDA runs out of
    memory). The generator's FLOPs are counted analytically
    (:func:`emvae.throughput.generator_flops` for the pixels rendered), 3 x forward per
    rendering and k renderings per image with rotation hypotheses; peak GPU memory is
    ``torch.cuda.max_memory_allocated``.
``loader``
    the streaming reader's images/s (fit's DataLoader with 0..4 workers, on the simulated
    64-px stack) against the images/s the 64-px steps consume.
``time_to_result``
    fit's defaults on a simulated 50,000 x 64 px set: per epoch, wall seconds since the start
    (scoring excluded), the circular correlation and median error of theta, and the best
    |Pearson r| of a z dimension with the conformation.
``torchrun``
    the same short fit launched plainly and by ``torchrun --nproc_per_node 1`` (NCCL on CUDA,
    gloo on a CPU; ``EMVAE_DDP=1`` makes the single process wrap the model in DDP), wall
    seconds each.

``tiny`` shrinks every size (narrow networks, batches of a few images, a few hundred
particles) so that the whole check runs in seconds on a CPU: a smoke test of the pipeline
whose figures mean nothing.
"""

from __future__ import annotations

import gc
import importlib.util
import json
import math
import os
import platform
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from emvae.bench import markdown_table, pose_recovery
from emvae.config import ModelConfig, RunConfig, TrainConfig
from emvae.data import default_pass_memory_mb, resolve_device
from emvae.errors import ConfigError
from emvae.hostsync import HostSyncCounter, optimizer_counters
from emvae.io import read_stack
from emvae.models import SpatialVAE
from emvae.particles import Particles
from emvae.preprocess import Preprocess, prepare
from emvae.stages import COARSE_PX
from emvae.throughput import CONFIGS, device_name, generator_flops, loader_rates, sync
from emvae.train import fit, training_step

SECTIONS = ("env", "matmul", "steps", "loader", "time_to_result", "torchrun")
JSONL, MARKDOWN = "gpu_check.jsonl", "gpu_check.md"
#: --tiny's networks: narrow enough for seconds on a CPU.
NARROW: dict[str, Any] = {"gen_hidden": 16, "enc_hidden": 16, "enc_channels": 4}


@dataclass
class Plan:
    """What the check measures and the seconds each section may take."""

    tiny: bool = False
    # (label, ModelConfig options, render px: None for the full box)
    configs: list[tuple[str, dict[str, Any], int | None]] = field(default_factory=list)
    precisions: tuple[str, ...] = ("fp32", "tf32", "bf16")
    batch: int = 100
    max_batch: int = 2**16  # the doubling stops here
    steps: int = 10
    warmup: int = 3
    matmul_n: int = 8192
    ttr_n: int = 50_000
    ttr_size: int = 64
    ttr_epochs: int = 20
    loader_batch: int = 256
    loader_batches: int = 20
    loader_workers: tuple[int, ...] = (0, 1, 2, 4)
    torchrun_epochs: int = 1
    torchrun_n: int = 10_000
    budgets: dict[str, float] = field(default_factory=lambda: {
        "env": 20.0, "matmul": 20.0, "steps": 160.0, "loader": 40.0, "time_to_result": 130.0,
        "torchrun": 70.0,
    })  # fmt: skip

    @classmethod
    def make(cls, tiny: bool = False) -> Plan:
        """The plan for one H100 in about 7.5 minutes, or (``tiny``) a CPU smoke run."""
        em = dict(CONFIGS["em"])
        if not tiny:
            return cls(
                configs=[
                    ("fit 64 px", {"image_size": 64}, None),
                    (f"fit 64 px, {COARSE_PX}-px stage", {"image_size": 64}, COARSE_PX),
                    ("fit 128 px", {"image_size": 128}, None),
                    (f"fit 128 px, {COARSE_PX}-px stage", {"image_size": 128}, COARSE_PX),
                    ("paper em (40 px, 2 x 1000)", em, None),
                ]
            )
        return cls(  # the same kinds of model, small enough for seconds on a CPU
            tiny=True,
            configs=[
                ("tiny fit 24 px", {"image_size": 24, **NARROW}, None),
                ("tiny fit 48 px, 16-px stage",
                 {"image_size": 48, "encoder_size": 16, **NARROW}, 16),
                ("tiny paper em (16 px)", {**em, "image_size": 16, **NARROW}, None),
            ],
            batch=4, max_batch=8, steps=2, warmup=1,
            matmul_n=128,
            ttr_n=120, ttr_size=24, ttr_epochs=2,
            loader_batch=16, loader_batches=3, loader_workers=(0, 1),
            torchrun_n=60,
            # no time limits: a smoke run (and the test suite) must not depend on the clock
            budgets={s: math.inf for s in SECTIONS},
        )  # fmt: skip


class OutOfTime(Exception):
    """A section's budget ran out (raised between measurements, or between epochs)."""


class Results:
    """``gpu_check.jsonl`` (appended line by line, flushed) and ``gpu_check.md`` (rewritten
    from all lines after each one) in ``out``."""

    def __init__(self, out: Path, work: Path | None = None) -> None:
        self.out = out
        self.work = work or out  # the simulated stack and the fits' run folders
        out.mkdir(parents=True, exist_ok=True)
        self.work.mkdir(parents=True, exist_ok=True)
        self.rows: list[dict[str, Any]] = []
        (out / JSONL).write_text("")

    def add(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        with open(self.out / JSONL, "a") as f:
            f.write(json.dumps(row, default=_plain) + "\n")
        (self.out / MARKDOWN).write_text(markdown(self.rows))


def _plain(v: Any) -> Any:
    return v.item() if isinstance(v, (np.floating, np.integer)) else str(v)


def run_gpu_check(
    out: str | Path,
    device: str = "auto",
    tiny: bool = False,
    sections: tuple[str, ...] = SECTIONS,
    plan: Plan | None = None,
    log: Callable[[str], None] = print,
    work: str | Path | None = None,
) -> list[dict[str, Any]]:
    """Run the ``sections`` of the check (module docstring) on ``device`` and write
    ``gpu_check.jsonl`` and ``gpu_check.md`` into ``out``; returns the rows. A section that
    fails is recorded (``{"section": ..., "error": ...}``) and the next one runs. ``work``:
    where the simulated stack (about 0.8 GB at 50,000 x 64 px) and the fits' run folders go
    (default: ``out``). A section not of :data:`SECTIONS` is refused before anything runs."""
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        raise ConfigError(f"unknown --sections {sorted(unknown)}; choose from {list(SECTIONS)}")
    out = Path(out)
    dev = resolve_device(device)
    plan = plan or Plan.make(tiny)
    results = Results(out, None if work is None else Path(work))
    needs_stack = {"loader", "time_to_result", "torchrun"} & set(sections)
    simulation = _start_simulation(results.work, plan, dev) if needs_stack else None
    try:
        for name in sections:
            deadline = time.perf_counter() + plan.budgets[name]
            t0 = time.perf_counter()
            log(f"[{name}] up to {plan.budgets[name]:.0f} s")
            try:
                section = globals()[f"_{name}"]  # _env, _matmul, ... below
                section(results, dev, plan, deadline, {"simulation": simulation})
                status = "done"
            except OutOfTime:
                status = "out of time"
            except Exception as e:  # recorded; the other sections still run
                results.add({"section": name, "error": f"{type(e).__name__}: {e}"})
                status = "failed"
            if dev.type == "cuda":
                torch.cuda.empty_cache()
            seconds = time.perf_counter() - t0
            results.add({"section": name, "status": status, "seconds": seconds})
            log(f"[{name}] {status} in {seconds:.1f} s")
    finally:
        if simulation is not None and simulation.poll() is None:
            simulation.kill()
    return results.rows


# -- sections ---------------------------------------------------------------------------------


def _env(
    results: Results, dev: torch.device, plan: Plan, deadline: float, state: dict[str, Any]
) -> None:
    row: dict[str, Any] = {
        "section": "env",
        "device": device_name(dev),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "tiny": plan.tiny,
        "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
    }
    if dev.type == "cuda":
        p = torch.cuda.get_device_properties(dev)
        row.update(
            cuda=torch.version.cuda,
            capability=f"{p.major}.{p.minor}",
            multiprocessors=p.multi_processor_count,
            memory_gb=p.total_memory / 1e9,
        )
    results.add(row)


def _matmul(
    results: Results, dev: torch.device, plan: Plan, deadline: float, state: dict[str, Any]
) -> None:
    """Dense bf16 rate: mean of timed n x n x n products of random matrices."""
    n = plan.matmul_n
    g = torch.Generator(device=dev).manual_seed(0)
    a = torch.randn(n, n, device=dev, dtype=torch.bfloat16, generator=g)
    b = torch.randn(n, n, device=dev, dtype=torch.bfloat16, generator=g)
    for _ in range(3):
        a @ b
    reps = 10 if dev.type == "cuda" else 2
    sync(dev)
    t0 = time.perf_counter()
    for _ in range(reps):
        c = a @ b
    sync(dev)
    seconds = (time.perf_counter() - t0) / reps
    assert torch.isfinite(c).all()
    tflops = 2 * n**3 / seconds / 1e12
    results.add(
        {"section": "matmul", "n": n, "dtype": "bf16", "seconds": seconds, "tflop_per_s": tflops}
    )


def _steps(
    results: Results, dev: torch.device, plan: Plan, deadline: float, state: dict[str, Any]
) -> None:
    """Every configuration and precision at ``plan.batch`` first (fit's pass memory), then
    the largest batch of each in one pass, so that a short budget loses the searches first."""
    peak = next((r["tflop_per_s"] for r in results.rows if "tflop_per_s" in r), None)
    runs = [(*config, precision) for config in plan.configs for precision in plan.precisions]
    for label, options, render, precision in runs:
        _check_time(deadline)
        row = measure_step(label, options, render, precision, plan.batch, dev, plan)
        row["fraction_of_bf16_peak"] = _fraction(row, peak)
        if precision == "fp32":
            row["host_syncs_in_step"] = count_step_syncs(options, render, dev)
        results.add(row)
    for label, options, render, precision in runs:
        _check_time(deadline)
        best = largest_batch(label, options, render, precision, dev, plan, deadline)
        if best is not None:
            best["fraction_of_bf16_peak"] = _fraction(best, peak)
            results.add(best)


def largest_batch(
    label: str,
    options: dict[str, Any],
    render: int | None,
    precision: str,
    dev: torch.device,
    plan: Plan,
    deadline: float,
) -> dict[str, Any] | None:
    """The step at the largest batch that fits in one pass: doubling from ``plan.batch`` until
    CUDA runs out of memory, ``plan.max_batch`` or the deadline; None if none above
    ``plan.batch`` fitted."""
    best, b = None, plan.batch
    while b * 2 <= plan.max_batch and time.perf_counter() < deadline:
        b *= 2
        stop = None
        try:
            row = measure_step(
                label, options, render, precision, b, dev, plan, one_pass=True, steps=3
            )
        except RuntimeError as e:  # CUDA's out-of-memory error, or a library's (cuBLAS,
            # cuFFT) allocation failure, or a kernel's 32-bit index limit: it does not fit
            stop = f"batch {b}: {type(e).__name__}: {str(e).splitlines()[0][:200]}"
        gc.collect()
        if dev.type == "cuda":
            torch.cuda.empty_cache()
        if stop is not None:
            if best is not None:
                best["stopped_by"] = stop
            break
        best = row
    if best is not None:
        best["largest_batch"] = True
    return best


def _fraction(row: dict[str, Any], peak: float | None) -> float | None:
    return row["generator_tflop_per_s"] / peak if peak else None


def _check_time(deadline: float) -> None:
    if time.perf_counter() > deadline:
        raise OutOfTime


def step_flops(model: SpatialVAE) -> float:
    """Analytic generator FLOPs of one training step per image: 3 x (forward + backward's
    two products) x the k hypotheses' renderings x :func:`generator_flops` at the pixels
    rendered (at the current render size: all of them with the CTF or without a mask, else
    those inside the mask)."""
    all_pixels = model.render_all or not model.masked
    pixels = model.n_pixels if all_pixels else len(model.pixel_index)
    return 3.0 * model.config.n_hypotheses * generator_flops(model.config, pixels)


def measure_step(
    label: str,
    options: dict[str, Any],
    render: int | None,
    precision: str,
    batch: int,
    dev: torch.device,
    plan: Plan,
    one_pass: bool = False,
    steps: int | None = None,
) -> dict[str, Any]:
    """Time ``steps`` training steps (after ``plan.warmup``) of the model ``options`` rendering
    at ``render`` px, on random images resident on ``dev``; ``one_pass``: the whole batch in
    one generator pass (pass memory unbounded), else fit's default pass memory. Returns one
    row of the ``steps`` section."""
    model, opt, rng, x = _step_setup(options, render, batch, dev)
    cfg = model.config
    model.pass_memory_mb = 2**40 if one_pass else default_pass_memory_mb(dev)
    amp = torch.autocast(dev.type, dtype=torch.bfloat16) if precision == "bf16" else None
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = precision != "fp32"
        torch.backends.cudnn.allow_tf32 = precision != "fp32"
        torch.cuda.reset_peak_memory_stats(dev)
    steps = steps or plan.steps
    for k in range(plan.warmup + steps):
        if k == plan.warmup:
            sync(dev)
            t0 = time.perf_counter()
        terms = training_step(model, opt, x, rng, amp=amp)
    sync(dev)
    seconds = (time.perf_counter() - t0) / steps
    finite = bool(torch.isfinite(terms.elbo).all())
    ips = batch / seconds
    flop = step_flops(model)
    passes = math.ceil(batch / model.images_per_pass(True))
    row = {
        "section": "steps",
        "config": label,
        "image_px": cfg.image_size,
        "stage_px": model.render_size,
        "encoder_px": cfg.encoder_px,
        "precision": precision,
        "batch": batch,
        "passes": passes,
        "step_ms": 1e3 * seconds,
        "images_per_s": ips,
        "generator_flop_per_image": flop,
        "generator_tflop_per_s": flop * ips / 1e12,
        "finite": finite,
    }
    if dev.type == "cuda":
        row["peak_gpu_gb"] = torch.cuda.max_memory_allocated(dev) / 1e9
    return row


def _step_setup(
    options: dict[str, Any], render: int | None, batch: int, dev: torch.device
) -> tuple[SpatialVAE, torch.optim.Adam, torch.Generator, torch.Tensor]:
    """A step's ingredients, seeded: the model ``options`` on ``dev`` rendering at ``render``
    px, its Adam, the step's random generator and ``batch`` random images."""
    torch.manual_seed(0)
    cfg = ModelConfig(**options)
    model = SpatialVAE(cfg).to(dev)
    if render is not None:
        model.set_render_size(render)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    rng = torch.Generator(device=dev).manual_seed(0)
    x = torch.randn(batch, cfg.channels, cfg.image_size, cfg.image_size, device=dev)
    return model, opt, rng, x


def count_step_syncs(options: dict[str, Any], render: int | None, dev: torch.device) -> int:
    """Host synchronisations in one training step of the model ``options`` (fp32, 4 images):
    on CUDA the warnings of ``torch.cuda.set_sync_debug_mode("warn")``, elsewhere
    :class:`emvae.hostsync.HostSyncCounter`'s count."""
    model, opt, rng, x = _step_setup(options, render, 4, dev)
    training_step(model, opt, x, rng)
    if dev.type == "cuda":
        return cuda_sync_warnings(lambda: training_step(model, opt, x, rng))
    with HostSyncCounter(optimizer_counters(opt)) as counter:
        training_step(model, opt, x, rng)
    return int(counter.total)


def cuda_sync_warnings(fn: Callable[[], Any]) -> int:
    """The number of synchronising CUDA calls PyTorch warns of while ``fn`` runs."""
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught)


def _simulation_dir(out: Path, plan: Plan) -> Path:
    return out / f"simulation_{plan.ttr_n}_{plan.ttr_size}px"


def _start_simulation(out: Path, plan: Plan, dev: torch.device) -> subprocess.Popen[bytes] | None:
    """Simulate the time-to-result set in a background process (on the CPU, half its cores)
    while the GPU sections run; None when it is already there."""
    sim = _simulation_dir(out, plan)
    if (sim / "particles.mrcs").exists() and (sim / "truth.csv").exists():
        return None
    if plan.tiny:  # a few hundred images: at once, in this process
        from emvae.simulate import write_simulation

        write_simulation(sim, n=plan.ttr_n, size=plan.ttr_size, snr=1.0, seed=0)
        return None
    threads = max(1, (os.cpu_count() or 2) // 2)
    code = (
        "import sys; from emvae.simulate import write_simulation; "
        "write_simulation(sys.argv[1], n=int(sys.argv[2]), size=int(sys.argv[3]), snr=1.0, "
        "seed=0)"
    )
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": _pythonpath()}
    args = [sys.executable, "-c", code, str(sim), str(plan.ttr_n), str(plan.ttr_size)]
    return subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL)


def _pythonpath() -> str:
    """This process's import path for child processes (emvae and emvae_cli as found here; the
    library does not import the command line)."""
    cli = importlib.util.find_spec("emvae_cli")
    files = [Path(__file__), *([Path(cli.origin)] if cli and cli.origin else [])]
    roots = [str(f.resolve().parents[1]) for f in files]
    return os.pathsep.join([*dict.fromkeys(roots), os.environ.get("PYTHONPATH", "")])


def _wait_simulation(out: Path, plan: Plan, state: dict[str, Any], deadline: float) -> Path:
    sim = _simulation_dir(out, plan)
    proc = state.get("simulation")
    while proc is not None and proc.poll() is None:
        _check_time(deadline)
        time.sleep(0.5)
    if proc is not None and proc.returncode:
        raise RuntimeError(f"the simulation failed (exit code {proc.returncode})")
    return sim


def _loader(
    results: Results, dev: torch.device, plan: Plan, deadline: float, state: dict[str, Any]
) -> None:
    sim = _wait_simulation(results.work, plan, state, deadline)
    stack = read_stack(sim / "particles.mrcs")
    prepared = prepare(stack, Preprocess())
    # the bf16 steps at batch plan.batch on images of the stack's size: the rows that hold these
    step = {"section": "steps", "precision": "bf16", "batch": plan.batch, "image_px": plan.ttr_size}
    consumed = {r["config"]: r["images_per_s"] for r in results.rows if step.items() <= r.items()}
    for workers in plan.loader_workers:
        _check_time(deadline)
        rows = loader_rates(stack, prepared, plan.loader_batch, plan.loader_batches, (workers,))
        name, rate = rows[-1]
        results.add(
            {
                "section": "loader",
                "reader": name,
                "image_px": prepared.size,
                "batch": plan.loader_batch,
                "images_per_s": rate,
                "step_consumes_images_per_s": consumed,
            }
        )


def _time_to_result(
    results: Results, dev: torch.device, plan: Plan, deadline: float, state: dict[str, Any]
) -> None:
    sim = _wait_simulation(results.work, plan, state, deadline)
    stack, truth = read_stack(sim / "particles.mrcs"), pd.read_csv(sim / "truth.csv")
    config = RunConfig(
        model=ModelConfig(image_size=plan.ttr_size, **(NARROW if plan.tiny else {})),
        train=TrainConfig(epochs=plan.ttr_epochs, device=str(dev), seed=0),
    )
    t0 = time.perf_counter()
    scoring = [0.0]

    def track(epoch: int, model: SpatialVAE, data: Any) -> dict[str, Any]:
        s0 = time.perf_counter()
        fig = pose_recovery(model, data, truth)
        wall = s0 - t0 - scoring[0]
        row = {
            "section": "time_to_result",
            "particles": len(stack),
            "image_px": plan.ttr_size,
            "epoch": epoch,
            "stage_px": model.render_size,
            "seconds": wall,
            "theta_circ_corr": fig["theta_circ_corr"],
            "theta_median_error_deg": fig["theta_median_error_deg"],
            "z_conformation_pearson": fig["z_conformation_pearson"],
        }
        if dev.type == "cuda":
            row["peak_gpu_gb"] = torch.cuda.max_memory_allocated(dev) / 1e9
        results.add(row)
        scoring[0] += time.perf_counter() - s0
        _check_time(deadline)
        return {}

    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    run_dir = results.work / "runs" / "time_to_result"
    fit(Particles.of(stack), config, run_dir, force=True, progress=False, on_epoch=track)


def _torchrun(
    results: Results, dev: torch.device, plan: Plan, deadline: float, state: dict[str, Any]
) -> None:
    sim = _wait_simulation(results.work, plan, state, deadline)
    stack = results.work / f"torchrun_{plan.torchrun_n}.npy"  # the first N particles
    if not stack.exists():
        images = read_stack(sim / "particles.mrcs").images
        np.save(stack, np.asarray(images[: plan.torchrun_n], dtype=np.float32))
    narrow = ["--gen-hidden", "16", "--enc-hidden", "16"] if plan.tiny else []
    fit_args = [
        "fit", str(stack), "--epochs", str(plan.torchrun_epochs), "--device", dev.type,
        "--stages", "off", "--force", "--quiet", *narrow,
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": _pythonpath(), "EMVAE_DDP": "1"}
    launchers = {
        "plain": [sys.executable, "-m", "emvae_cli.main"],
        "torchrun --nproc_per_node 1": [
            sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1",
            "-m", "emvae_cli.main",
        ],
    }  # fmt: skip
    for name, launcher in launchers.items():
        remaining = deadline - time.perf_counter()
        if remaining < 1:
            raise OutOfTime
        run_dir = results.work / "runs" / f"torchrun_{name.split()[0]}"
        limit = remaining if math.isfinite(remaining) else None  # --tiny: no limit
        t0 = time.perf_counter()
        try:
            cmd = [*launcher, *fit_args, "-o", str(run_dir)]
            done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=limit)
        except subprocess.TimeoutExpired:
            raise OutOfTime from None
        row: dict[str, Any] = {
            "section": "torchrun",
            "launcher": name,
            "backend": "-" if name == "plain" else ("nccl" if dev.type == "cuda" else "gloo"),
            "epochs": plan.torchrun_epochs,
            "wall_seconds": time.perf_counter() - t0,
            "exit_code": done.returncode,
        }
        metrics = run_dir / "metrics.csv"
        if done.returncode == 0 and metrics.exists():
            m = pd.read_csv(metrics, comment="#")
            row["epoch_seconds"] = float(m["seconds"].median())
            row["particles"] = int(len(pd.read_csv(run_dir / "particles.csv", comment="#")))
        else:
            row["error"] = done.stderr[-2000:]
        results.add(row)


# -- the tables ------------------------------------------------------------------------------


def _fmt(v: Any, digits: int = 1) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if isinstance(v, float):
        return f"{v:,.{digits}f}"
    return str(v)


STEP_COLUMNS = (
    "config", "stage px", "precision", "batch", "passes", "images/s", "step ms",
    "generator TFLOP/s", "of bf16 peak", "peak GPU GB", "host syncs",
)  # fmt: skip
TTR_COLUMNS = (
    "epoch", "stage px", "wall s", "theta circ. corr.", "theta median error deg", "z abs(r)",
)  # fmt: skip


def _table(title: str, columns: Sequence[str], cells: list[list[Any]]) -> list[str]:
    """A markdown section: ``## title``, a table of ``columns`` with a row per entry of
    ``cells``, a blank line; nothing without rows."""
    return [f"## {title}", "", *markdown_table(columns, cells), ""] if cells else []


def markdown(rows: list[dict[str, Any]]) -> str:
    """The check's tables (one per section) from its rows."""
    env = next((r for r in rows if r.get("section") == "env"), {})
    lines = [f"# emvae GPU check: {env.get('device', '?')}", ""]
    if env:
        lines += [
            f"torch {env.get('torch')}, CUDA {env.get('cuda', '-')}, {env.get('date_utc')} UTC"
            + (" — TINY SMOKE RUN: sizes shrunk, figures meaningless" if env.get("tiny") else ""),
            "",
        ]
    mm = next((r for r in rows if r.get("section") == "matmul" and "n" in r), None)
    if mm:
        lines += [
            f"Dense bf16 matrix product {mm['n']}^3: **{mm['tflop_per_s']:.1f} TFLOP/s** "
            "(the peak the generator is compared with).",
            "",
        ]
    lines += _table("Training step", STEP_COLUMNS, [
        [r["config"], r["stage_px"], r["precision"],
         f"{r['batch']} (largest)" if r.get("largest_batch") else str(r["batch"]),
         r["passes"], _fmt(r["images_per_s"]), _fmt(r["step_ms"], 2),
         _fmt(r["generator_tflop_per_s"], 3),
         "-" if r.get("fraction_of_bf16_peak") is None
         else f"{100 * r['fraction_of_bf16_peak']:.1f}%",
         _fmt(r.get("peak_gpu_gb"), 2), _fmt(r.get("host_syncs_in_step"))]
        for r in rows if r.get("section") == "steps" and "images_per_s" in r
    ])  # fmt: skip
    lines += _table("Streaming reader", ("reader", "images/s", "the step consumes"), [
        [r["reader"], _fmt(r["images_per_s"]),
         ", ".join(f"{k}: {v:,.0f}" for k, v in r["step_consumes_images_per_s"].items()) or "-"]
        for r in rows if r.get("section") == "loader" and "reader" in r
    ])  # fmt: skip
    ttr = [r for r in rows if r.get("section") == "time_to_result" and "epoch" in r]
    title = f"Time to result ({ttr[0]['particles']:,} x {ttr[0]['image_px']} px)" if ttr else ""
    lines += _table(title, TTR_COLUMNS, [
        [r["epoch"], r["stage_px"], _fmt(r["seconds"]), _fmt(r["theta_circ_corr"], 3),
         _fmt(r["theta_median_error_deg"]), _fmt(r["z_conformation_pearson"], 3)]
        for r in ttr
    ])  # fmt: skip
    lines += _table("torchrun", ("launcher", "backend", "wall s", "epoch s", "exit"), [
        [r["launcher"], r["backend"], _fmt(r["wall_seconds"]), _fmt(r.get("epoch_seconds"), 2),
         r["exit_code"]]
        for r in rows if r.get("section") == "torchrun" and "launcher" in r
    ])  # fmt: skip
    lines += _table("Sections", ("section", "status", "seconds"), [
        [r["section"], r.get("status") or f"error: {r['error'][:120]}", _fmt(r.get("seconds"))]
        for r in rows if "status" in r or "error" in r
    ])  # fmt: skip
    return "\n".join(lines)


__all__ = [
    "SECTIONS", "Plan", "count_step_syncs", "markdown", "measure_step", "run_gpu_check",
    "step_flops",
]  # fmt: skip
