import json
import math

import numpy as np
import pytest

from scopefx import Calibration, FocusParams, RunBaseline
from scopefx.errors import CalibrationError, ConfigError


def _series(slope=0.4, intercept=9.0, center=0.0, noise=0.03, seed=0):
    rng = np.random.default_rng(seed)
    defocus = np.linspace(-6, 6, 25) + center
    density = np.exp(
        intercept - slope * np.abs(defocus - center) + rng.normal(0, noise, defocus.size)
    )
    return defocus, density


def test_calibration_recovers_a_known_slope():
    defocus, density = _series(slope=0.4, intercept=9.0)
    cal = Calibration.fit(defocus, density, max_defocus=1.0)
    assert cal.slope == pytest.approx(0.4, rel=0.05)
    assert cal.intercept == pytest.approx(9.0, abs=0.05)
    assert cal.r < -0.99
    assert cal.estimate_defocus(math.exp(9.0 - 0.4 * 3)) == pytest.approx(3.0, abs=0.2)
    assert cal.estimate_defocus(math.exp(10)) == 0.0


def test_calibration_fits_the_centre_from_working_distances():
    defocus, density = _series(center=5.2)
    cal = Calibration.fit(defocus, density, fit_center=True)
    assert cal.center == pytest.approx(5.2, abs=0.1)
    assert cal.slope == pytest.approx(0.4, rel=0.05)


def test_calibration_verdicts():
    cal = Calibration.fit(*_series(), max_defocus=1.0)
    assert cal.verdict(math.exp(9.0)).status == "in_focus"
    verdict = cal.verdict(math.exp(9.0 - 0.4 * 3))
    assert verdict.status == "out_of_focus"
    assert verdict.defocus == pytest.approx(3.0, abs=0.2)


def test_calibration_round_trips_through_json(tmp_path):
    cal = Calibration.fit(*_series(), params=FocusParams(n_scales=12), instrument={"kV": 3})
    path = cal.save(tmp_path / "cal.json")
    assert json.loads(path.read_text())["scopefx_calibration"] == 1
    assert Calibration.load(path) == cal


def test_calibration_refuses_other_parameters():
    cal = Calibration.fit(*_series(), params=FocusParams(n_scales=12))
    cal.check_params(FocusParams(n_scales=12, cell_px=64))  # map cells do not matter
    with pytest.raises(CalibrationError, match="n_scales: calibrated 12, now 16"):
        cal.check_params(FocusParams())


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (None, "does not exist"),
        ("{not json", "is not JSON"),
        ('{"a": 1}', "not a scopefx calibration"),
    ],
)
def test_calibration_load_errors(tmp_path, content, match):
    path = tmp_path / "cal.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(CalibrationError, match=match):
        Calibration.load(path)


@pytest.mark.parametrize(
    ("change", "match"),
    [  # hand edits: tracebacks after scoring had begun, or every image called in focus
        ({"intercept": "7.5"}, "intercept must be a number, got '7.5'"),
        ({"intercept": None}, "intercept must be a number, got None"),
        ({"intercept": float("nan")}, "intercept must be finite"),
        ({"intercept": 1e6}, "is no log density"),
        ({"slope": True}, "slope must be a number"),
        ({"n": 2.5}, "n must be a whole number"),
        ({"params": [1, 2]}, "params must be a mapping"),
        ({"params": {"modality": "xray"}}, r"params: .*xray"),
        ({"unit": 5}, "unit must be a string"),
        # an integer beyond float: OverflowError from math.isfinite
        ({"intercept": 10**400}, "intercept must be finite, got an integer of 401 digits"),
        # every frame, 24.8 um out, called in focus
        ({"slope": 1e300}, "is beyond any |defocus| it can estimate"),
        ({"max_defocus": 1e300}, "every image would be called in focus"),
    ],
)
def test_a_calibration_file_with_a_value_no_calibration_holds_is_refused(tmp_path, change, match):
    cal = Calibration.fit(*_series(), max_defocus=1.0)
    path = cal.save(tmp_path / "cal.json")
    data = json.loads(path.read_text())
    data.update(change)
    path.write_text(json.dumps(data))
    with pytest.raises(CalibrationError, match=match) as info:
        Calibration.load(path)
    assert "cal.json" in str(info.value)  # names the file


@pytest.mark.parametrize("kind", ["nested", "huge", "fifo", "device"])
def test_a_calibration_file_that_is_no_calibration_is_refused_without_reading_it_all(
    tmp_path, kind
):
    """[[[[...]]]] 100,000 deep gave a RecursionError traceback; /dev/zero was read until
    memory ran out, a FIFO hung, a 300 MB file was read whole."""
    import os

    path = tmp_path / "cal.json"
    if kind == "nested":
        path.write_text("[" * 100_000 + "]" * 100_000)
        match = "is not JSON: nested too deep"
    elif kind == "huge":
        with open(path, "wb") as fh:
            fh.truncate(300 << 20)  # sparse: nothing is written, 300 MB long
        match = "is 314,572,800 bytes, over the limit .*; a calibration is a few kB"
    elif kind == "fifo":
        os.mkfifo(path)
        match = "is a FIFO .*, not a regular file"
    else:
        path = "/dev/zero"
        match = "is a character device, not a regular file"
    with pytest.raises(CalibrationError, match=match):
        Calibration.load(path)


def test_a_calibration_file_without_its_fields_names_them(tmp_path):
    """Was 'Calibration.__init__() missing 3 required positional arguments: ...'."""
    path = Calibration.fit(*_series()).save(tmp_path / "cal.json")
    data = json.loads(path.read_text())
    for name in ("r", "n", "max_defocus"):
        del data[name]
    path.write_text(json.dumps(data))
    with pytest.raises(CalibrationError, match=r"cal.json' lacks the field\(s\) r, n, "
                       r"max_defocus, which every calibration holds") as info:  # fmt: skip
        Calibration.load(path)
    assert "__init__" not in str(info.value)


def test_a_calibration_of_a_newer_format_says_so(tmp_path):
    path = Calibration.fit(*_series()).save(tmp_path / "cal.json")
    data = json.loads(path.read_text())
    data["scopefx_calibration"] = 2
    path.write_text(json.dumps(data))
    with pytest.raises(CalibrationError, match=r"newer format \(2; this scopefx"):
        Calibration.load(path)


def test_fit_center_on_a_series_on_one_side_of_focus():
    """A series from near focus outwards on one side: the centre search took the far end, about
    which counts rise, and the calibration was refused ('counts do not fall')."""
    defocus = np.array([0.15, 9.9, 24.8])
    density = np.exp(7.5 - 0.09 * defocus)
    cal = Calibration.fit(defocus, density, fit_center=True)
    assert cal.slope == pytest.approx(0.09, rel=0.05) and cal.center <= 0.15 + 1e-9


def test_calibration_fit_errors():
    with pytest.raises(CalibrationError, match="at least 3"):
        Calibration.fit([0, 1], [10, 5])
    with pytest.raises(CalibrationError, match="do not fall"):
        Calibration.fit([0, 1, 2, 3], [10, 20, 40, 80])


def test_run_baseline_flags_planted_drops_and_ignores_them_after():
    baseline = RunBaseline(window=10, ratio=0.5, warmup=3)
    rng = np.random.default_rng(0)
    densities = 1000 * np.exp(rng.normal(0, 0.05, 30))
    planted = {8, 9, 20}
    densities[list(planted)] = 300
    verdicts = [baseline.update(float(d)).status for d in densities]
    assert verdicts[:3] == ["warmup"] * 3
    flagged = {i for i, v in enumerate(verdicts) if v == "out_of_focus"}
    assert flagged == planted
    assert baseline.reference == pytest.approx(1000, rel=0.1)  # drops never entered it


def test_run_baseline_partial_from_maps():
    baseline = RunBaseline(window=5, ratio=0.5, warmup=2)
    good = np.full((2, 2), 1000.0)
    for _ in range(3):
        assert baseline.update(1000.0, focus_map=good).status in ("warmup", "in_focus")
    bad = good.copy()
    bad[0, 1] = 400  # below ratio (0.5) but not below cell_ratio (0.3): content varies
    assert baseline.update(900.0, focus_map=bad).status == "in_focus"
    bad[0, 1] = 100
    verdict = baseline.update(800.0, focus_map=bad)
    assert verdict.status == "partial" and verdict.bad_cells == 1


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"window": 0}, "window must be"),
        ({"ratio": 1.5}, "ratio must be in"),
        ({"warmup": 50}, "warmup must be"),
    ],
)
def test_run_baseline_validates(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        RunBaseline(**kwargs)
