"""The command line through Typer's test runner: a real fit, encode, one-line errors, help."""

import dataclasses
import enum
import inspect
import json
import types
import typing

import mrcfile
import numpy as np
import pytest
import typer
from conftest import SMALL, runner
from emvae_cli.fit import fit as fit_command
from emvae_cli.main import app

from emvae.config import ModelConfig, TrainConfig
from emvae.io import read_table


def _ok(result):
    assert result.exit_code == 0, result.output
    return result


def test_fit_then_encode(tiny_stack, tmp_path):
    out = tmp_path / "run"
    _ok(runner.invoke(app, ["fit", str(tiny_stack), "-o", str(out), *SMALL]))
    table = read_table(out / "particles.csv")
    assert len(table) == 60 and table["image"].iloc[0] == f"1@{tiny_stack}"
    enc = tmp_path / "enc.csv"
    _ok(
        runner.invoke(
            app,
            [
                "encode",
                str(out / "checkpoints" / "last.pt"),
                str(tiny_stack),
                "-o",
                str(enc),
                "--device",
                "cpu",
                "-q",
            ],
        )
    )
    again = read_table(enc)
    assert np.allclose(again["z1"], table["z1"], atol=1e-6)
    assert np.allclose(again["theta_deg"], table["theta_deg"], atol=1e-4)
    # refuses to overwrite, both commands
    r = runner.invoke(app, ["encode", str(out), str(tiny_stack), "-o", str(enc), "-q"])
    assert r.exit_code != 0 and "--force" in r.output
    r = runner.invoke(app, ["fit", str(tiny_stack), "-o", str(out), *SMALL])
    assert r.exit_code != 0 and "--resume" in r.output
    # resume to more epochs
    _ok(runner.invoke(app, ["fit", str(tiny_stack), "-o", str(out), "--resume", "-n", "3", "-q"]))
    assert len(np.genfromtxt(out / "metrics.csv", delimiter=",", names=True)) == 3


def test_fit_example(tmp_path):
    out = tmp_path / "ex"
    _ok(
        runner.invoke(
            app,
            [
                "fit",
                "--example",
                "-o",
                str(out),
                "-n",
                "1",
                "--gen-hidden",
                "16",
                "--enc-hidden",
                "16",
                "-q",
            ],
        )
    )
    assert (out / "example" / "truth.csv").exists()
    assert len(read_table(out / "particles.csv")) == len(read_table(out / "example/truth.csv"))


def _bad(tmp_path, kind):
    p = tmp_path / "bad.mrcs"
    if kind == "missing":
        return tmp_path / "missing.mrcs"
    if kind == "not-mrc":
        p.write_text("this is not an MRC file\n" * 100)
    elif kind == "empty":
        with mrcfile.new(p) as m:
            m.set_data(np.zeros((0, 8, 8), np.float32))
    elif kind == "one-image":
        with mrcfile.new(p) as m:
            m.set_data(np.random.default_rng(0).normal(size=(1, 8, 8)).astype(np.float32))
    elif kind == "non-square":
        with mrcfile.new(p) as m:
            m.set_data(np.zeros((4, 8, 6), np.float32))
    elif kind == "nan":
        data = np.random.default_rng(0).normal(size=(4, 8, 8)).astype(np.float32)
        data[2, 0, 0] = np.nan
        with mrcfile.new(p) as m:
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                m.set_data(data)
    return p


@pytest.mark.parametrize(
    "kind, message",
    [
        ("missing", "no such file"),
        ("not-mrc", "not a readable MRC file"),
        ("empty", "contains no images"),
        ("one-image", "at least 2"),
        ("non-square", "square"),
        ("nan", "image 3 (index 2) contains NaN"),
    ],
)
def test_bad_input_is_one_line(tmp_path, kind, message):
    path = _bad(tmp_path, kind)
    r = runner.invoke(app, ["fit", str(path), "-o", str(tmp_path / "out"), *SMALL])
    assert r.exit_code == 1
    lines = r.output.strip().splitlines()
    assert len(lines) == 1, r.output
    assert message in lines[0] and path.name in lines[0]
    assert "Traceback" not in r.output


def test_bad_options_are_one_line(tiny_stack, tmp_path):
    r = runner.invoke(
        app, ["fit", str(tiny_stack), "-o", str(tmp_path / "o"), "--theta-prior", "vonmises", "-q"]
    )
    assert r.exit_code == 2 and "Error: Invalid value for '--theta-prior'" in r.output
    assert "'vonmises' is not one of 'uniform', 'gaussian'" in r.output  # the allowed values
    r = runner.invoke(app, ["fit", str(tiny_stack), "-o", "o", "--rotation-bins", "5", "-q"])
    assert r.exit_code == 2 and "'5' is not one of '4', '8', '16'" in r.output
    r = runner.invoke(app, ["fit", "-o", str(tmp_path / "o")])
    assert r.exit_code == 1 and "--example" in r.output
    r = runner.invoke(
        app, ["encode", str(tiny_stack), str(tiny_stack), "-o", str(tmp_path / "e.csv")]
    )
    assert r.exit_code == 1 and "not a readable emvae checkpoint" in r.output


def test_options_with_choices_store_plain_values(tiny_stack, tmp_path):
    """The parsed choices reach config.json as the strings and numbers config.py holds."""
    out = tmp_path / "run"
    choices = ["--rotation-bins", "4", "--activation", "relu", "--stream", "off"]
    more = ["--norm", "image", "--likelihood", "gaussian", "--encoder", "auto", "--ctf", "off"]
    _ok(runner.invoke(app, ["fit", str(tiny_stack), "-o", str(out), *SMALL, *choices, *more]))
    config = json.loads((out / "config.json").read_text())
    model, train = config["model"], config["train"]
    assert model["rotation_bins"] == 4 and type(model["rotation_bins"]) is int
    assert (model["activation"], model["likelihood"], model["ctf"]) == ("relu", "gaussian", "off")
    assert model["encoder"] == "equivariant" and train["stream"] == "off"
    assert config["data"]["preprocess"]["normalize"] == "image"
    _ok(runner.invoke(app, ["encode", str(out), str(tiny_stack), "-o", str(tmp_path / "e.csv")]))


def test_every_fit_option_reaches_config_json_by_its_field_name(tiny_stack, tmp_path):
    """fit builds ModelConfig/TrainConfig from its options by field name: an option whose name
    is a field defaults to that field's default, and a value given reaches config.json."""
    fields = {f.name: f.default for c in (ModelConfig, TrainConfig) for f in dataclasses.fields(c)}
    params = inspect.signature(fit_command).parameters
    named = {k: p.default.default for k, p in params.items() if k in fields}
    assert len(named) > 40 and "theta_prior_std_deg" in named and "augment_rotation" in named
    for name, value in named.items():  # --ctf auto is resolved from the input
        assert value is None or value == fields[name] or (name, value) == ("ctf", "auto"), name
    out = tmp_path / "run"
    given = [*SMALL, "--theta-prior-std", "30", "--mask-radius", "5", "--no-augment"]
    given += ["--checkpoint-every", "7", "--fourier-scale", "0.25", "--shift-prior-px", "1.5"]
    _ok(runner.invoke(app, ["fit", str(tiny_stack), "-o", str(out), *given]))
    config = json.loads((out / "config.json").read_text())
    model, train = config["model"], config["train"]
    assert (model["theta_prior_std_deg"], model["mask_radius_px"]) == (30, 5)
    assert (model["fourier_scale"], model["shift_prior_px"]) == (0.25, 1.5)
    assert train["augment_rotation"] is False and train["checkpoint_every"] == 7


def _commands(typer_app, path=()):
    """(command words, function) of every command of a Typer app, sub-apps included."""
    for info in typer_app.registered_commands:
        yield (*path, info.name or info.callback.__name__.replace("_", "-")), info.callback
    for group in typer_app.registered_groups:
        yield from _commands(group.typer_instance, (*path, group.name))


def _choices(annotation) -> list[str]:
    """The values a Literal or Enum annotation allows (None dropped; [] for other types)."""
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return [str(m.value) for m in annotation]
    if typing.get_origin(annotation) is typing.Literal:
        return [v for a in typing.get_args(annotation) for v in (_choices(a) or [str(a)])]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return [v for a in typing.get_args(annotation) if a is not type(None) for v in _choices(a)]
    return []


def test_every_help_lists_allowed_values_and_keeps_square_brackets():
    """Each command's --help: the values of every option with a fixed set of them (Literal
    or Enum annotations: what the parser accepts), device kinds, no <bool>, [brackets] kept."""
    commands = dict(_commands(app))
    assert {("fit",), ("export-star",), ("bench", "mnist"), ("analyze",)} <= set(commands)
    seen = 0
    helps = {}
    for words, fn in commands.items():
        r = runner.invoke(app, [*words, "--help"])
        assert r.exit_code == 0, (words, r.output)
        text = helps[words] = " ".join(r.output.split())
        assert "<bool>" not in text, words
        hints = typing.get_type_hints(fn)
        for name, param in inspect.signature(fn).parameters.items():
            info = param.default
            if not isinstance(info, typer.models.OptionInfo):
                continue
            choices = _choices(hints[name])
            if choices:
                flag = max(info.param_decls, key=len)
                assert f"{flag} <{'|'.join(choices)}>" in text, (words, flag, choices)
                seen += 1
        # --device takes a pattern (cuda:N), so its help names the kinds
        if "--device <str>" in text:
            assert "auto" in text and "cuda:N" in text, words
    assert seen >= 15  # fit alone has 12
    fit = helps[("fit",)]
    assert "--ctf <auto|off|on|phase-flip>" in fit and "--stream <auto|on|off>" in fit
    assert "--rotation / --no-rotation" in fit and "file.h5[:/dataset], .fits[EXT]" in fit
    assert "[shift_x_px, shift_y_px, numeric factors]" in helps[("report",)]
    mnist = helps[("bench", "mnist")]
    assert "mnist, rotated, rotated_translated" in mnist and "vanilla, fixed, spatial" in mnist
