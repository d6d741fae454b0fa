"""Progress output: Rich bars on a terminal, timestamped plain lines in a log (no frames)."""

import io
import re

import pytest
from conftest import SMALL, runner
from emvae_cli.main import app
from rich.console import Console

from emvae.errors import ConfigError
from emvae.progress import PROGRESS_ENV, LiveProgress, PlainProgress, training_progress

STAMP = r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}  "
EPOCH = re.compile(STAMP + r"epoch (\d+)/(\d+)  train ELBO -?[\d.]+, test ELBO .*\(\d+\.\d s")
ESCAPES = re.compile(r"\x1b|\r")


def _drive(bar, epochs: int = 3) -> None:
    """What fit does with a display: read, the epochs' steps, encode."""
    advance = bar.task("reading images", 10)
    advance(4)
    advance(6)
    bar.start(0, epochs)
    for epoch in range(1, epochs + 1):
        bar.epoch_start(epoch, 4)
        for _ in range(4):
            bar.step("loss 1.0")
        bar.epoch_end(epoch, "train ELBO -12.34, test ELBO -13.00, error 1.00, KL 2.00")
    bar.task("encoding", 10)(3)  # cut short: the end line says where it stopped


def test_a_console_that_is_no_terminal_gets_one_timestamped_line_per_epoch(monkeypatch):
    monkeypatch.delenv(PROGRESS_ENV, raising=False)
    buf = io.StringIO()
    with training_progress(True, Console(file=buf, width=40)) as bar:
        assert isinstance(bar, PlainProgress)
        _drive(bar)
    text = buf.getvalue()
    assert not ESCAPES.search(text), repr(text)
    lines = text.splitlines()
    assert all(re.match(STAMP, line) for line in lines), lines  # and no wrapping at width 40
    epochs = [m.groups() for m in map(EPOCH.match, lines) if m]
    assert epochs == [("1", "3"), ("2", "3"), ("3", "3")], lines
    assert "ETA" in lines[2] and "ETA" not in lines[4]  # none after the last epoch
    rest = [re.sub(STAMP, "", line, count=1) for line in lines if not EPOCH.match(line)]
    assert rest[0] == "reading images: 10 to do"
    assert re.fullmatch(r"reading images: 10 done in \d+\.\d s( \(\d+/s\))?", rest[1]), rest
    assert rest[2] == "encoding: 10 to do"
    assert re.fullmatch(r"encoding: stopped at 3/10 after \d+\.\d s", rest[3]), rest
    assert len(lines) == 7


def test_a_terminal_keeps_the_rich_bars_unless_plain_is_asked_for(monkeypatch):
    monkeypatch.delenv(PROGRESS_ENV, raising=False)
    buf = io.StringIO()
    with training_progress(True, Console(file=buf, force_terminal=True, width=100)) as bar:
        assert isinstance(bar, LiveProgress)
        _drive(bar)
    assert "\r" in buf.getvalue() and "epoch 2: train ELBO -12.34" in buf.getvalue()
    monkeypatch.setenv(PROGRESS_ENV, "plain")
    buf = io.StringIO()
    with training_progress(True, Console(file=buf, force_terminal=True)) as bar:
        _drive(bar, epochs=2)
    assert not ESCAPES.search(buf.getvalue())
    assert len([line for line in buf.getvalue().splitlines() if EPOCH.match(line)]) == 2
    monkeypatch.setenv(PROGRESS_ENV, "live")
    with training_progress(True, Console(file=io.StringIO())) as bar:
        assert isinstance(bar, LiveProgress)
    monkeypatch.setenv(PROGRESS_ENV, "fancy")
    with pytest.raises(ConfigError, match="EMVAE_PROGRESS='fancy'.*auto, live, plain"):
        with training_progress(True, Console(file=io.StringIO())):
            pass
    buf = io.StringIO()
    with training_progress(False, Console(file=buf)) as bar:  # --quiet: nothing at all
        _drive(bar)
    assert buf.getvalue() == ""


def test_fit_into_a_log_writes_plain_lines(tiny_stack, tmp_path, monkeypatch):
    """A tiny fit through the CLI (CliRunner's stderr is no terminal): one line per epoch
    with a timestamp, start and end lines around reading and encoding, no frames."""
    monkeypatch.delenv(PROGRESS_ENV, raising=False)
    args = [a for a in SMALL if a != "-q"]
    r = runner.invoke(app, ["fit", str(tiny_stack), "-o", str(tmp_path / "run"), *args])
    assert r.exit_code == 0, r.output
    assert not ESCAPES.search(r.output), repr(r.output)
    lines = r.output.splitlines()
    assert [m.groups() for m in map(EPOCH.match, lines) if m] == [("1", "2"), ("2", "2")]
    for what in ("reading images", "encoding"):
        assert any(re.fullmatch(STAMP + what + ": 60 to do", line) for line in lines), lines
        done = STAMP + what + r": 60 done in \d+\.\d s( \(\d+/s\))?"
        assert any(re.fullmatch(done, line) for line in lines), lines
    progress = [line for line in lines if "epoch" in line or " to do" in line or " done" in line]
    assert progress and all(re.match(STAMP, line) for line in progress)


def test_a_long_epoch_reports_images_and_etas_at_least_once_a_minute():
    """In a log, an epoch of an hour is not an hour of silence: a line at least every
    REPORT_EVERY_S seconds with the images done, the rate and both ETAs (a fake clock)."""
    from emvae.progress import REPORT_EVERY_S

    buf = io.StringIO()
    bar = PlainProgress(Console(file=buf, width=40))
    now = [0.0]
    bar._clock = lambda: now[0]
    bar.start(0, 3)
    bar.epoch_start(1, 200, 20_000)  # 200 steps of 100 images, 2 s per step
    for _ in range(200):
        now[0] += 2.0
        bar.step()
    bar.epoch_end(1, "train ELBO -1.0")
    lines = [re.sub(STAMP, "", line, count=1) for line in buf.getvalue().splitlines()]
    inside = [line for line in lines if re.match(r"epoch 1/3: ", line)]
    assert len(inside) == int(400 / REPORT_EVERY_S)  # 400 s: at 60, 120, ..., 360 s
    first = inside[0]
    # 60 s: 30 steps = 3000 images at 50/s; 170 steps (340 s) left, then 2 epochs of 400 s
    assert first == (
        "epoch 1/3: 3000/20000 images, 50 images/s, epoch ETA 0:05:40, run ETA 0:19:00"
    ), first


def test_a_long_encoding_reports_at_least_once_a_minute():
    """The final table of 20,000 particles at 128 px takes minutes: its loop says how far it
    is, as often as an epoch does (a fake clock)."""
    from emvae.progress import REPORT_EVERY_S

    buf = io.StringIO()
    bar = PlainProgress(Console(file=buf, width=40))
    now = [0.0]
    bar._clock = lambda: now[0]
    advance = bar.task("encoding", 20_000)
    for i in range(79):  # 256 images every 8 s (32/s), 32 in the last batch
        now[0] += 8.0
        advance(256 if i < 78 else 20_000 - 78 * 256)
    lines = [re.sub(STAMP, "", line, count=1) for line in buf.getvalue().splitlines()]
    inside = [line for line in lines if re.match(r"encoding: \d+/", line)]
    assert REPORT_EVERY_S == 60.0
    assert len(inside) == 9  # at 64, 128, ..., 576 s (every 8th batch); 632 s is the end
    assert inside[0] == "encoding: 2048/20000, 32/s, ETA 0:09:21"  # 17,952 left at 32/s
    assert lines[-1] == "encoding: 20000 done in 632.0 s (32/s)"
