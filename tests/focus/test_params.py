import itertools

import pytest

from scopefx import FocusParams
from scopefx.errors import ConfigError


def test_defaults_and_scales():
    p = FocusParams()
    assert p.n_scales == 16
    assert len(p.sigmas_px) == 17
    assert p.sigmas_px[0] == pytest.approx(1.0)
    assert p.sigmas_px[-1] == pytest.approx(30.0)
    steps = {round(b - a, 9) for a, b in itertools.pairwise(p.sigmas_px)}
    assert len(steps) == 1  # t_i = min + (i - 1)(max - min)/n: evenly spaced


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("n_scales", 0, "n_scales must be between 1 and 256, got 0"),
        ("n_scales", 2.5, "n_scales must be an integer, got 2.5"),
        ("min_sigma_px", 0.1, "min_sigma_px must be >= 0.5"),
        ("max_sigma_px", 0.8, "max_sigma_px must be > min_sigma_px"),
        ("saturation_pct", 60, r"saturation_pct must be in \[0, 50\), got 60"),
        ("polarity", "up", "polarity must be None or one of"),
        ("modality", "sem", "modality must be one of"),
        ("noise_model", "local", "noise_model must be None or one of"),
        ("channel", -1, "channel must be None or an integer >= 0"),
        ("mode", "quick", "mode must be one of"),
        ("threshold", -1.0, "threshold must be None or a finite number >= 0, got -1.0"),
        ("threshold_k", float("nan"), "threshold_k must be a finite number"),
        ("scale_weight", -1.0, r"scale_weight must be None or in \[0, 8\], got -1.0"),
        ("scale_weight", "2", "scale_weight must be a finite number"),
        ("target_px", 4, "target_px must be None or an integer >= 16, got 4"),
        ("cell_px", 2, "cell_px must be an integer >= 8, got 2"),
    ],
)
def test_bad_values_name_the_field_and_value(field, value, message):
    with pytest.raises(ConfigError, match=message):
        FocusParams(**{field: value})


def test_config_error_is_also_a_value_error():
    with pytest.raises(ValueError):
        FocusParams(n_scales=-1)


def test_round_trip_and_unknown_keys():
    p = FocusParams(mode="fast", threshold=0.01)
    assert FocusParams.from_dict(p.to_dict()) == p
    with pytest.raises(ConfigError, match=r"unknown focus parameter\(s\) \['sigma'\]"):
        FocusParams.from_dict({"sigma": 3})
