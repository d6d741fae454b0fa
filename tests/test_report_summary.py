"""What ``emvae report`` says on stderr about the agreement with a reference."""

from __future__ import annotations

from emvae.report import agreement_lines

ROTATION = {
    "circular_correlation": 0.98765,
    "median_error_deg": 3.04,
    "median_error_with_flip_deg": 2.96,
}


def test_no_reference_no_lines():
    assert agreement_lines({"run": "r", "particles": 5, "figures": [], "warnings": []}) == []


def test_each_measure_one_line_in_order():
    result = {
        "matched": 40,
        "rotation": ROTATION,
        "rotation_body": {**ROTATION, "circular_correlation": 0.5},
        "shift": {
            "pearson_x": 0.9,
            "pearson_y": 0.8,
            "offset_x_px": 0.25,
            "offset_y_px": -1.0,
            "rms_error_px": 0.333,
        },
        "latent_usage": [{"name": "z1", "used": True}, {"name": "z2", "used": False}],
        "latent": {
            "z1": {"conformation": {"pearson": 0.91, "spearman": -0.5}},
            "z2": {"conformation": {"pearson": 0.01, "spearman": 0.02}},
        },
    }
    assert agreement_lines(result) == [
        "rotation vs reference: circular correlation 0.988, median error 3.0 deg "
        "(3.0 allowing a flip), 40 particles matched",
        "rotation vs reference (body frame): circular correlation 0.500, median error 3.0 deg "
        "(3.0 allowing a flip), 40 particles matched",
        "shift vs reference: Pearson x 0.900, y 0.800; after removing the centre offset "
        "(+0.25, -1.00) px: RMS error 0.33 px",
        "z1 vs conformation: Pearson +0.910, Spearman -0.500",
        "z2 vs conformation: Pearson +0.010, Spearman +0.020 (z unused: this correlation is noise)",
    ]


def test_a_shift_without_an_error_is_not_reported():
    """A reference with shifts but no angles: no centre offset, no line."""
    assert agreement_lines({"shift": {"pearson_x": 0.1, "pearson_y": 0.2}}) == []
