import math

import numpy as np
import pytest
import tifffile

from scopefx import FocusParams, samples, score_files
from scopefx.focus import FocusRecord


@pytest.fixture
def run_folder(tmp_path):
    """Good sections, a planted out-of-focus one, and every kind of bad file."""
    sharp = samples.bundled_image("immunohistochemistry", size=256)
    good = []
    for i in range(8):
        amount = 4.0 if i == 6 else 0.0
        path = tmp_path / f"section_{i:02d}.tif"
        tifffile.imwrite(path, samples.acquire(samples.defocus(sharp, amount), seed=i))
        good.append(path)
    bad = {
        "missing": tmp_path / "gone.tif",
        "empty": tmp_path / "empty.tif",
        "corrupt": tmp_path / "truncated.tif",
        "invalid_values": tmp_path / "nan.npy",
        "too_small": tmp_path / "tiny.npy",
        "ndim": tmp_path / "fourd.npy",
        "unsupported": tmp_path / "notes.txt",
    }
    bad["empty"].write_bytes(b"")
    data = good[0].read_bytes()
    bad["corrupt"].write_bytes(data[: len(data) // 3])
    nan = np.zeros((64, 64), np.float32)
    nan[3, 4] = np.inf  # an overflow (NaN alone is no data: scored around)
    np.save(bad["invalid_values"], nan)
    np.save(bad["too_small"], np.zeros((4, 64), np.uint8))
    np.save(bad["ndim"], np.zeros((2, 2, 32, 32), np.uint8))
    bad["unsupported"].write_text("not an image")
    return good, bad


def test_one_bad_file_never_loses_the_rest(run_folder):
    good, bad = run_folder
    paths = [good[0], *bad.values(), *good[1:]]
    records = list(score_files(paths))
    assert [r.path for r in records] == [str(p) for p in paths]  # input order, absolute paths
    by_path = {r.path: r for r in records}
    for status, path in bad.items():
        record = by_path[str(path)]
        assert record.status == status, (status, record.error)
        assert record.error and record.features is None
    for path in good:
        record = by_path[str(path)]
        assert record.ok and record.features > 0 and record.error == ""
    assert by_path[str(bad["missing"])].error.count("gone.tif") >= 1


def test_verdicts_flag_the_planted_section(run_folder):
    good, _ = run_folder
    records = list(score_files(good, baseline=None))
    flagged = [r.path for r in records if r.verdict == "out_of_focus"]
    assert flagged == [str(good[6])]


def test_threads_give_the_same_records(run_folder):
    good, bad = run_folder
    paths = [*good, *bad.values()]
    one = [(r.path, r.status, r.features) for r in score_files(paths, workers=1)]
    two = [(r.path, r.status, r.features) for r in score_files(paths, workers=2)]
    assert one == two


def test_a_stack_gives_a_record_per_page(tmp_path):
    sharp = samples.bundled_image("moon", size=128)
    stack = np.stack([samples.acquire(samples.defocus(sharp, d), seed=1) for d in (0, 2, 4)])
    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, stack, photometric="minisblack")
    records = list(score_files([path], params=FocusParams(max_sigma_px=10)))
    assert [r.page for r in records] == [0, 1, 2]
    assert records[0].features > records[1].features > records[2].features


def test_records_are_json_and_csv_ready(run_folder):
    import json

    good, bad = run_folder
    record, failed = list(score_files([good[0], bad["corrupt"]]))
    json.dumps([record.to_dict(), failed.to_dict()])
    assert {"path", "features", "status", "error", "verdict", "score_seconds"} <= set(record.row())


def test_to_dict_gives_none_for_every_number_that_is_not_finite():
    """A ratio to a run baseline of 0 (blank sections) is infinite. Before: to_dict kept inf,
    and JSON written from it held the token Infinity, which no JSON parser accepts."""
    import json

    fmap = np.array([[np.nan, np.inf], [1.25, -np.inf]])
    record = FocusRecord(
        path="/run/blank.tif", features=0, density_per_mpx=0.0, ratio=math.inf,
        defocus_estimate=-math.inf, threshold=np.float64(np.inf), focus_map=fmap,
    )  # fmt: skip
    out = json.loads(json.dumps(record.to_dict(), allow_nan=False))
    assert out["ratio"] is None and out["defocus_estimate"] is None and out["threshold"] is None
    assert out["density_per_mpx"] == 0.0 and out["features"] == 0 and out["noise_sigma"] is None
    assert out["focus_map"] == [[None, None], [1.2, None]]


def test_zarr_references_are_scored_and_made_absolute(tmp_path, monkeypatch):
    import zarr

    monkeypatch.chdir(tmp_path)
    image = samples.acquire(samples.bundled_image("gravel", size=128))
    root = zarr.open_group("run.zarr", mode="w")
    root.create_array("raw/0", shape=image.shape, dtype=image.dtype)[:] = image
    (record,) = score_files(["run.zarr::raw/0"])
    assert record.ok, record.error
    assert record.path == f"{tmp_path}/run.zarr::raw/0"
    assert record.features == score_files([tmp_path / "run.zarr::raw/0"]).__next__().features
    (bad,) = score_files(["s3://bucket/image.tif"])
    assert bad.status == "unsupported" and "s3://" in bad.error


def test_band_ratio_reaches_the_record_and_the_csv(run_folder, tmp_path):
    """The fluorescence preset scores count x R^k; R is in the record and the CSV (it was only
    on FocusResult, so a run's CSV could not say why two sections scored apart), empty where
    the preset does not compute it."""
    from scopefx.focus.csv import FocusCsvWriter, read_focus_csv

    good, _ = run_folder
    fluo = list(score_files(good[:2], params=FocusParams(modality="fluorescence"), baseline=None))
    em = list(score_files(good[:1], baseline=None))
    assert all(r.ok and math.isfinite(r.band_ratio) and r.band_ratio > 0 for r in fluo)
    assert math.isnan(em[0].band_ratio)
    (out,) = score_files([good[6]], params=FocusParams(modality="fluorescence"), baseline=None)
    sharp, blurred = fluo[0].band_ratio, out.band_ratio
    assert blurred < sharp  # the planted out-of-focus section holds less fine-band energy
    path = tmp_path / "focus.csv"
    with FocusCsvWriter(path) as sink:
        for r in (*fluo, *em):
            sink.write(r)
    rows = read_focus_csv(path)
    assert float(rows[0]["band_ratio"]) == pytest.approx(fluo[0].band_ratio, rel=1e-5)
    assert rows[2]["band_ratio"] == ""
    back = FocusRecord.from_row(rows[0])
    assert back.band_ratio == pytest.approx(fluo[0].band_ratio, rel=1e-5)
    assert fluo[0].to_dict()["band_ratio"] == pytest.approx(fluo[0].band_ratio)
    assert em[0].to_dict()["band_ratio"] is None


@pytest.mark.parametrize("kind", ["npy", "zarr"])
def test_a_grey_image_stored_with_a_last_axis_of_1_is_one_grey_plane(tmp_path, kind):
    """An (H, W, 1) array, as ML and scikit-image code often saves a grey image, was taken for
    a stack of H pages of W x 1 px: H records of too_small, nothing scored."""
    import zarr

    image = samples.acquire(samples.bundled_image("gravel", size=128))
    if kind == "npy":
        path = str(tmp_path / "grey.npy")
        np.save(path, image[:, :, None])
    else:
        path = f"{tmp_path / 'grey.zarr'}::raw"
        array = zarr.open_group(str(tmp_path / "grey.zarr"), mode="w").create_array(
            "raw", shape=(*image.shape, 1), dtype=image.dtype
        )
        array[:] = image[:, :, None]
    np.save(tmp_path / "plane.npy", image)
    (record,) = score_files([path])
    (plane,) = score_files([tmp_path / "plane.npy"])
    assert record.ok, record.error
    assert (record.page, record.colour, record.features) == (None, "grey", plane.features)


def test_a_last_axis_too_short_for_a_page_gives_one_ndim_record(tmp_path):
    """An (H, W, 5) array (five channels last, most likely) gave H records of too_small: as
    the documented stack (pages, H, W) none of its 5 px wide pages can be scored. One record
    says its axes are ambiguous; a stack whose pages can be scored is still one."""
    image = samples.acquire(samples.bundled_image("gravel", size=128))
    np.save(tmp_path / "five.npy", np.repeat(image[:, :, None], 5, axis=2))
    (record,) = score_files([tmp_path / "five.npy"])
    assert record.status == "ndim" and record.page is None
    assert "(128, 128, 5) has ambiguous axes" in record.error
    np.save(tmp_path / "stack.npy", np.stack([image] * 5))
    assert [r.page for r in score_files([tmp_path / "stack.npy"])] == [0, 1, 2, 3, 4]
