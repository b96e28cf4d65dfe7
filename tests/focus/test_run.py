"""One verdict policy (FocusRun) for every caller: the same scores give the same verdicts
whether they were computed here or by the remote function."""

from __future__ import annotations

import math

import numpy as np
import pytest
import tifffile

from scopefx import Calibration, Client, FocusParams, FocusRun, RunBaseline, score_files
from scopefx.errors import ConfigError, ImageNotFoundError
from scopefx.focus import FocusRecord
from scopefx.samples import acquire, bundled_image, defocus, partial_defocus

#: Sections 0..11: 5 and 9 out of focus, 7 sharp on the left and blurred on the right.
OUT, PARTIAL = (5, 9), 7


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("run")
    base = bundled_image("immunohistochemistry", size=512)
    paths = []
    for i in range(12):
        section = np.roll(base, 7 * i, axis=1)
        if i in OUT:
            section = defocus(section, 4.0)
        elif i == PARTIAL:
            section = partial_defocus(section, 6.0, fraction=0.5)
        path = folder / f"section_{i:02d}.tif"
        tifffile.imwrite(path, acquire(section, seed=i))
        paths.append(str(path))
    return folder, paths


PARAMS = FocusParams(cell_px=128)


def _verdicts(records):
    return [(r.path.rsplit("/", 1)[-1], r.verdict, r.bad_cells) for r in records]


def test_local_and_remote_give_the_same_verdicts_partial_included(run_folder):
    _, paths = run_folder
    run = FocusRun(params=PARAMS)
    local = list(score_files(paths, params=PARAMS, run=run))
    run.settle()
    with Client(progress=False) as client:  # the registered function's path: scores only
        remote = client.score_focus(paths, params=PARAMS)
    assert _verdicts(local) == _verdicts(remote)
    verdicts = [r.verdict for r in remote]
    assert [i for i, v in enumerate(verdicts) if v == "out_of_focus"] == list(OUT)
    assert verdicts[PARTIAL] == "partial"
    assert "warmup" not in verdicts  # settled at the end


def test_score_files_without_a_run_settles_its_own_warmup(run_folder):
    """score_files() without run= left the warm-up records 'warmup' (and those judged against
    the warm-up's baseline unchanged) for good: the caller never had the run to settle. The
    list of its records now equals Client.score_focus's."""
    _, paths = run_folder
    records = list(score_files(paths, params=PARAMS))
    assert "warmup" not in [r.verdict for r in records]
    with Client(progress=False) as client:
        assert _verdicts(records) == _verdicts(client.score_focus(paths, params=PARAMS))
    run = FocusRun(params=PARAMS)  # a run of the caller's goes on: not settled here
    assert "warmup" in [r.verdict for r in score_files(paths[:3], params=PARAMS, run=run)]


def test_calibrated_verdicts_are_the_same_and_partial_survives(run_folder):
    _, paths = run_folder
    densities = [r.density_per_mpx for r in score_files(paths, params=PARAMS)]
    defocus_um = [4.0 if i in OUT else 0.0 for i in range(len(paths))]
    cal = Calibration.fit(defocus_um, densities, params=PARAMS, max_defocus=2.0)
    local = list(score_files(paths, params=PARAMS, calibration=cal))
    with Client(progress=False) as client:
        remote = client.score_focus(paths, params=PARAMS, calibration=cal)
    assert _verdicts(local) == _verdicts(remote)
    verdicts = [r.verdict for r in remote]
    assert [i for i, v in enumerate(verdicts) if v == "out_of_focus"] == list(OUT)
    assert verdicts[PARTIAL] == "partial"  # passes as a whole; its cells are judged by the run
    assert all(not math.isnan(r.defocus_estimate) for r in remote)


def test_a_run_continued_in_pieces_judges_like_one_batch(run_folder):
    _, paths = run_folder
    whole = FocusRun(params=PARAMS)
    one = list(score_files(paths, params=PARAMS, run=whole))
    pieces = FocusRun(params=PARAMS)
    two = [r for part in (paths[:4], paths[4:]) for r in score_files(part, run=pieces)]
    assert [r.verdict for r in one] == [r.verdict for r in two]


def test_seed_continues_the_baseline_without_judging_again():
    run = FocusRun(baseline=RunBaseline(warmup=3))
    earlier = [FocusRecord(path=f"s{i}", features=1, density_per_mpx=1000.0, verdict="in_focus")
               for i in range(3)]  # fmt: skip
    run.seed(earlier)
    assert run.ready and [r.verdict for r in earlier] == ["in_focus"] * 3
    low = run.judge(FocusRecord(path="s3", features=1, density_per_mpx=100.0))
    assert low.verdict == "out_of_focus"
    failed = run.judge(FocusRecord(path="bad", status="corrupt", error="truncated"))
    assert failed.verdict == "" and run.baseline.reference == 1000.0


def test_warmup_sections_of_an_earlier_session_are_judged_once_the_baseline_exists():
    """A watch stopped after 2 of 5 warm-up sections, then restarted on its CSV: the two were
    seeded as 'warmup' and never judged (out of focus, never flagged)."""
    run = FocusRun()
    earlier = [FocusRecord(path=f"s{i}", features=1, density_per_mpx=200.0, verdict="warmup")
               for i in range(2)]  # fmt: skip
    run.seed(earlier)
    later = [run.judge(FocusRecord(path=f"t{i}", features=1, density_per_mpx=1000.0))
             for i in range(3)]  # fmt: skip
    changed = run.settle()
    assert [r.verdict for r in earlier] == ["out_of_focus"] * 2
    assert changed[:2] == earlier and {r.verdict for r in later} == {"in_focus"}


def test_settle_waits_for_the_baseline():
    run = FocusRun(baseline=RunBaseline(warmup=3))
    first = run.judge(FocusRecord(path="a", features=1, density_per_mpx=900.0))
    assert first.verdict == "warmup" and run.settle() == [] and not run.ready
    for density in (1000.0, 1100.0):
        run.judge(FocusRecord(path="b", features=1, density_per_mpx=density))
    assert [r.verdict for r in run.settle()] == ["in_focus"] * 3
    assert run.settle() == []


def test_bad_policy_arguments_are_named():
    with pytest.raises(ConfigError, match="calibration must be a Calibration, got dict"):
        FocusRun(calibration={"slope": 1})  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="baseline must be a RunBaseline"):
        FocusRun(baseline=0.5)  # type: ignore[arg-type]


def test_a_calibration_path_given_to_the_scoring_calls_is_refused_with_the_way_to_load_it():
    """score_files and Client().score_focus raised AttributeError: 'str' object has no
    attribute 'focus_params' where FocusRun and FolderWatch named the mistake."""
    import scopefx
    from scopefx.focus import score_files

    hint = r"calibration must be a Calibration, got str; load the file with Calibration\.load"
    with pytest.raises(ConfigError, match=hint):
        list(score_files(["x.tif"], calibration="cal.json"))  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=hint):
        scopefx.Client().score_focus(["x.tif"], calibration="cal.json")


def test_a_single_string_is_refused_or_expanded(run_folder):
    folder, paths = run_folder
    with pytest.raises(ConfigError, match=r"single string .*section_00\.tif.*pass \["):
        list(score_files(paths[0]))
    with Client(progress=False) as client:
        with pytest.raises(ConfigError, match="single string"):
            client.score_focus(paths[0])
        expanded = client.score_focus(str(folder), params=PARAMS)  # a folder is expanded
        # a folder or glob with no image in it is an error that names it, not an empty run
        with pytest.raises(ImageNotFoundError, match=r"no images found in .*sectoin_\*\.tif"):
            client.score_focus(str(folder / "sectoin_*.tif"))
        (folder / "empty").mkdir()
        with pytest.raises(ImageNotFoundError, match=r"no images found in .*empty"):
            list(score_files(str(folder / "empty")))
        assert client.score_focus([]) == []  # an empty list is an empty run
    assert [r.path for r in expanded] == paths


def test_focus_score_takes_a_path_or_an_array(run_folder):
    import scopefx

    _, paths = run_folder
    from_path = scopefx.focus_score(paths[0])
    from_array = scopefx.focus_score(tifffile.imread(paths[0]))
    assert from_path.features == from_array.features > 0
    with pytest.raises(ConfigError, match=r"image must be an array .* or the path"):
        scopefx.focus_score([[1, 2], [3, 4]])


def _rec(density: float, *, noisy: bool = False) -> FocusRecord:
    return FocusRecord(path="s", features=1, density_per_mpx=density, noise_limited=noisy)


def test_a_run_that_starts_out_of_focus_is_caught_once_it_rises():
    """No calibration, and the first sections are already blurred: the baseline built from
    them would call them in focus. Once the run's density rises well above it, they are
    judged again against the later baseline."""
    run = FocusRun()
    records = [run.judge(_rec(d)) for d in [800.0] * 5 + [3000.0] * 20]
    changed = run.settle()
    assert "rises_after_warmup" in run.doubts()
    assert [r.verdict for r in records[:5]] == ["out_of_focus"] * 5
    assert changed == records[:5]
    assert {r.verdict for r in records[5:]} == {"in_focus"}


def test_sections_called_in_focus_before_the_rise_are_judged_again_with_the_warmup():
    """The sections judged between the warm-up and the rise were compared with the warm-up's
    out-of-focus baseline: as blurred as the warm-up, they were called in focus, while the same
    density later was out of focus (a light-sheet stack scored from its far end)."""
    run = FocusRun()
    densities = [800.0] * 5 + [820.0] * 4 + [3000.0] * 20 + [810.0]
    records = [run.judge(_rec(d)) for d in densities]
    assert records[-1].verdict == "out_of_focus"
    changed = run.settle()
    assert [r.verdict for r in records[:9]] == ["out_of_focus"] * 9
    assert changed == records[:9]  # in run order
    assert {r.verdict for r in records[9:29]} == {"in_focus"}


def test_a_run_shorter_than_its_warmup_ends_unverifiable_not_warming_up():
    """Three images without a calibration never make a baseline of five: at the end of the
    run they are unverifiable, not left 'warmup' (a single image was 'warmup' for ever)."""
    run = FocusRun()
    records = [run.judge(_rec(d)) for d in (900.0, 1000.0, 1100.0)]
    assert run.settle() == [] and {r.verdict for r in records} == {"warmup"}
    assert run.settle(final=True) == records
    assert {r.verdict for r in records} == {"unverifiable"}
    assert run.doubts() == ["too_few_sections"]
    whole = FocusRun()  # a complete warm-up is settled as before
    judged = [whole.judge(_rec(1000.0)) for _ in range(5)]
    whole.settle(final=True)
    assert {r.verdict for r in judged} == {"in_focus"} and whole.doubts() == []


def test_client_score_focus_settles_a_short_run_as_final(tmp_path):
    paths = []
    for k in range(2):
        path = tmp_path / f"s{k}.tif"
        tifffile.imwrite(path, acquire(bundled_image("brick", size=128), seed=k))
        paths.append(str(path))
    records = Client().score_focus(paths)
    assert [r.verdict for r in records] == ["unverifiable"] * 2


def test_only_a_bounded_number_of_early_sections_is_kept():
    run = FocusRun()
    for _ in range(1000):
        run.judge(_rec(1000.0))
    assert len(run._early) <= 4 * run.baseline.window
    assert len(run._order_of) <= 4 * run.baseline.window + run.baseline.warmup


def test_a_baseline_too_low_for_its_modality_is_unverifiable_not_in_focus():
    run = FocusRun()  # em: an in-focus section holds far more than 100 features per Mpx
    records = [run.judge(_rec(100.0)) for _ in range(8)]
    run.settle()
    assert run.doubts() == ["low_for_modality"]
    assert {r.verdict for r in records} == {"unverifiable"}
    sparse = FocusRun(params=FocusParams(modality="fluorescence"))  # its floor is lower
    judged = [sparse.judge(_rec(300.0)) for _ in range(8)]
    sparse.settle()
    assert {r.verdict for r in judged} == {"in_focus"}
    calibrated = FocusRun(calibration=Calibration(intercept=5.0, slope=1.0, r=-1.0, n=3,
                                                  max_defocus=1.0))  # fmt: skip
    assert calibrated.judge(_rec(100.0)).verdict == "in_focus"  # no baseline doubts
    assert calibrated.doubts() == []


def test_a_calibration_that_does_not_fit_the_run_is_doubted_without_changing_verdicts():
    """A calibration made on other content: most sections far above its best-focus density,
    or not one near its in-focus range. Nothing before 5 sections; verdicts unchanged."""
    calibration = Calibration(intercept=math.log(100.0), slope=1.0, r=-1.0, n=3, max_defocus=1.0)
    dense, sparse, fitting = (FocusRun(calibration=calibration) for _ in range(3))
    for i, run in enumerate((dense, sparse, fitting)):
        values = ([400.0] * 6, [15.0] * 6, [100.0, 80.0, 50.0, 20.0, 10.0, 400.0])[i]
        judged = [run.judge(_rec(v)) for v in values]
        assert [r.verdict for r in judged] == [calibration.verdict(v).status for v in values]
    assert dense.doubts() == ["above_calibration"]
    assert sparse.doubts() == ["below_calibration"]  # its in-focus range starts at 36.8
    assert fitting.doubts() == []
    early = FocusRun(calibration=calibration)
    for _ in range(4):
        early.judge(_rec(15.0))
    assert early.doubts() == []


def test_noise_limited_warmup_is_doubted():
    run = FocusRun()
    records = [run.judge(_rec(5000.0, noisy=True)) for _ in range(6)]
    run.settle()
    assert "noise_limited_warmup" in run.doubts()
    assert {r.verdict for r in records} == {"unverifiable"}


def test_the_default_baseline_ratio_follows_the_modality():
    assert FocusRun().baseline.ratio == 0.5
    assert FocusRun(params=FocusParams(modality="fluorescence")).baseline.ratio == 0.8
    assert FocusRun(params=FocusParams(modality="brightfield")).baseline.ratio == 0.5
    given = RunBaseline(ratio=0.3)
    assert FocusRun(baseline=given, params=FocusParams(modality="fluorescence")).baseline is given


def test_doubts_follow_the_pure_check_record_by_record():
    """FocusRun keeps its doubts up to date with constant work per record; they must equal
    what baseline_doubts says about the same densities at every step."""
    from scopefx.focus._plausibility import baseline_doubts

    densities = [800.0] * 5 + [900.0, 2000.0, 2500.0, 3000.0, 3100.0, 3200.0, 2900.0] * 3
    run = FocusRun()
    for k, density in enumerate(densities, start=1):
        run.judge(_rec(density))
        assert run.doubts() == baseline_doubts(densities[:k], modality="em"), k
    seeded = FocusRun()
    seeded.seed([FocusRecord(path="s", features=1, density_per_mpx=d, verdict="in_focus")
                 for d in densities])  # fmt: skip
    assert seeded.doubts() == ["rises_after_warmup"]


def test_the_series_plot_shows_unverifiable_sections():
    """Unverifiable sections had no colour: a run of nothing else plotted no point and warned
    'No artists with labels found to put in legend'."""
    import warnings

    from scopefx.focus.plot import plot_focus_series

    records = [_rec(100.0 + k) for k in range(2)]
    for record in records:
        record.verdict = "unverifiable"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        figure = plot_focus_series(records)
    assert [t.get_text() for t in figure.axes[0].get_legend().get_texts()] == ["unverifiable"]


def _live(densities: list[float], **kwargs: object) -> list[FocusRecord]:
    """Judge ``densities`` as ``scopefx watch`` does: settle() after every section."""
    run = FocusRun(**kwargs)  # type: ignore[arg-type]
    records = []
    for d in densities:
        records.append(run.judge(_rec(d)))
        run.settle()
    run.settle(final=True)
    return records


def _batch(densities: list[float], **kwargs: object) -> list[FocusRecord]:
    """Judge ``densities`` as ``scopefx focus`` does: all of them, then settle() once."""
    run = FocusRun(**kwargs)  # type: ignore[arg-type]
    records = run.judge_all([_rec(d) for d in densities])
    run.settle(final=True)
    return records


#: A light-sheet stack scored from its far end: out of focus, coming into focus over a dozen
#: sections, in focus, then out again (densities per Mpx, the fluorescence preset's scale).
RAMP = [10.0, 11, 15, 18, 17, 28, 42, 38, 63, 71, 75, 80, 84, 100, 105, 110, 111, 108, 112,
        115, 109, 113, 116, 114, 111, 107, 104, 95, 90, 70, 60, 50, 40, 30]  # fmt: skip


def test_live_and_batch_runs_give_the_same_verdicts():
    """docs/focus.md: the same scores get the same verdicts wherever they were judged.
    Before: a watch (settle() after every section) judged the sections before the rise once,
    at the first settle() after it, against a baseline still made of the out-of-focus warm-up,
    and kept them in focus (4 light-sheet frames 0.55-0.7 um out: in focus live, out of focus
    in a batch)."""
    params = FocusParams(modality="fluorescence")
    live = [r.verdict for r in _live(RAMP, params=params)]
    batch = [r.verdict for r in _batch(RAMP, params=params)]
    assert live == batch
    assert live[:10] == ["out_of_focus"] * 10  # 10-80 % of the in-focus level


def test_sections_found_out_of_focus_no_longer_define_in_focus():
    """Once a rise shows the run started out of focus, the warm-up and the sections called in
    focus against it leave the baseline. Before: they stayed in the running median (up to 8
    of its 25 sections), so a later section at 0.77 of the in-focus level passed (ratio 0.8)."""
    densities = [1000.0] * 5 + [1200.0] * 10 + [3000.0] * 10 + [2300.0]
    run = FocusRun(params=FocusParams(modality="fluorescence"))
    records = run.judge_all([_rec(d) for d in densities])
    assert "rises_after_warmup" in run.doubts()
    assert records[-1].verdict == "out_of_focus"
    assert run.baseline.reference == 3000.0
    run.settle()
    assert {r.verdict for r in records[:15]} == {"out_of_focus"}


def test_a_section_flagged_after_a_rise_is_not_turned_back_by_a_slow_drift():
    """Before: after a rise, the warm-up was judged again at every settle(); as focus drifted
    slowly down, the running median followed it and sections already flagged (re-acquire,
    --on-oof fired) were reported in focus again and their CSV rows rewritten."""
    densities = [1000.0, 1050, 1020, 1010, 1000] + [3000.0] * 12
    densities += [3000.0 * 0.96**k for k in range(1, 32)]
    run = FocusRun()
    records, seen = [], {}
    for d in densities:
        records.append(run.judge(_rec(d)))
        for r in run.settle():
            seen.setdefault(id(r), []).append(r.verdict)
    assert [r.verdict for r in records[:5]] == ["out_of_focus"] * 5
    for verdicts in seen.values():  # once flagged, never back
        assert "out_of_focus" not in verdicts or set(
            verdicts[verdicts.index("out_of_focus") :]
        ) == {"out_of_focus"}, verdicts


def test_a_restarted_run_seeds_its_baseline_from_unverifiable_sections_too():
    """A run whose baseline is doubted calls passing sections 'unverifiable'; they entered the
    baseline all the same. Before: seed() left them out, so a watch restarted on such a run had
    no baseline (reference nan against 412.5) and called the next sections 'warmup'."""
    densities = [190.0, 400.0, 420.0, 410.0, 415.0, 188.0, 430.0]
    params = FocusParams(modality="brightfield")
    first = FocusRun(params=params)
    done = first.judge_all([_rec(d) for d in densities])
    first.settle()
    assert "unverifiable" in {r.verdict for r in done}
    again = FocusRun(params=params)
    again.seed(done)
    assert again.baseline.reference == pytest.approx(first.baseline.reference, rel=0.05)
    assert again.judge(_rec(150.0)).verdict == "out_of_focus"
