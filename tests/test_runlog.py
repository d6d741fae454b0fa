"""run.log: every line a fit prints, timestamped, in the run folder; a resume appends to it."""

import re

import pytest
from conftest import SMALL, runner
from emvae_cli.main import app

from emvae.errors import OutputExistsError
from emvae.runlog import LOG, run_log
from emvae.safety import foreign_outputs, record_outputs

STAMP = r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}  "


def _ok(result):
    assert result.exit_code == 0, result.output
    return result


def _text(line: str) -> str:
    """A log line without its timestamp (every line has one)."""
    assert re.match(STAMP, line), line
    return re.sub(STAMP, "", line, count=1)


def test_fit_writes_run_log_and_resume_appends_to_it(tiny_stack, tmp_path):
    out = tmp_path / "run"
    args = ["fit", str(tiny_stack), "-o", str(out), *SMALL, "--z-delay", "5"]
    _ok(runner.invoke(app, args))
    first = (out / LOG).read_text()
    lines = [_text(line) for line in first.splitlines()]
    assert re.fullmatch(
        rf"emvae \S+ fit: emvae fit {re.escape(str(tiny_stack))} --out .*", lines[0]
    )
    assert "--z-delay 5" in lines[0] and "--quiet" in lines[0]
    assert re.fullmatch(
        r"run [0-9a-f]{8}: 60 images of 16 px, zdim 1, 2 epochs, device cpu", lines[1]
    )
    epochs = [t for t in lines if t.startswith("epoch ")]
    assert [t.split()[1] for t in epochs] == ["1/2", "2/2"]
    assert all("train ELBO" in t and "(z held at 0)" in t for t in epochs)
    assert "encoding: 60 to do" in lines
    # the warning fit printed (z never trained), then where it wrote, last
    assert any(t.startswith("warning: z was held at 0 for all 2 epochs") for t in lines)
    assert lines[-1].startswith(f"wrote {out / 'particles.csv'} (60 particles)")
    assert not foreign_outputs(out, [LOG])  # recorded as emvae's

    _ok(runner.invoke(app, ["fit", str(tiny_stack), "-o", str(out), "--resume", "-n", "3", "-q"]))
    both = (out / LOG).read_text()
    assert both.startswith(first)  # the first run's lines kept, as they were
    added = [_text(line) for line in both[len(first) :].splitlines()]
    assert re.fullmatch(
        r"emvae \S+ fit --resume from epoch 2: emvae fit .* --epochs 3 --resume --quiet", added[0]
    )
    assert [t.split()[1] for t in added if t.startswith("epoch ")] == ["3/3"]
    assert added[-1].startswith("wrote ")


def test_a_log_emvae_did_not_write_is_never_touched(tiny_stack, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / LOG).write_text("my notes\n")
    r = runner.invoke(app, ["fit", str(tiny_stack), "-o", str(out), *SMALL, "--force"])
    assert r.exit_code != 0 and "which emvae did not write" in r.output and LOG in r.output
    assert (out / LOG).read_text() == "my notes\n"


def test_a_log_that_grew_after_its_record_stays_emvaes(tmp_path):
    """An interrupted fit may leave lines after the recorded content: still emvae's; a log
    whose recorded beginning changed is not."""
    (tmp_path / LOG).write_text("a\n")
    record_outputs(tmp_path, [LOG], "r1", growing=True)
    with open(tmp_path / LOG, "a") as f:
        f.write("b\n")
    assert foreign_outputs(tmp_path, [LOG]) == []
    (tmp_path / LOG).write_text("x\nb\n")
    assert foreign_outputs(tmp_path, [LOG]) == [LOG]
    (tmp_path / LOG).write_text("")  # shorter than recorded
    assert foreign_outputs(tmp_path, [LOG]) == [LOG]


def test_an_error_ends_the_log_with_a_stopped_line(tmp_path):
    with pytest.raises(OutputExistsError), run_log(tmp_path, "r1") as log:
        assert log is not None
        log.line("note: two\nlines")
        raise OutputExistsError("out: exists")
    lines = [_text(line) for line in (tmp_path / LOG).read_text().splitlines()]
    assert lines == ["note: two", "lines", "stopped: OutputExistsError: out: exists"]
    assert not foreign_outputs(tmp_path, [LOG])
