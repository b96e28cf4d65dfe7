"""The registered functions, called as an endpoint calls them (in this process here; in a
real GlobusComputeEngine in test_engine.py)."""

from __future__ import annotations

import json
import os
import time
import types

import numpy as np
import pytest
import zarr

from conftest import DEFOCUS
from scopefx import FocusParams, fuse
from scopefx._backend import list_gpus
from scopefx.errors import (
    AccessDeniedError,
    ConfigError,
    DeviceUnavailableError,
    ResourceLimitError,
)
from scopefx.focus._batch import score_one
from scopefx.remote import FUNCTION_NAMES, functions


def _same_levels(a, b) -> None:
    ga, gb = zarr.open_group(str(a), mode="r"), zarr.open_group(str(b), mode="r")
    levels = sorted(k for k in ga.array_keys())
    assert levels == sorted(gb.array_keys()) and levels
    for level in levels:
        np.testing.assert_array_equal(ga[level][...], gb[level][...])


def test_score_focus_one_dict_per_reference_in_order(confined, section_refs):
    refs = [*section_refs[:3], "run1/corrupt.tif", "run1/nope.tif", "../outside/secret.tif"]
    out = functions.score_focus(refs)
    assert [item["ref"] for item in out] == refs
    assert [item["status"] for item in out] == [
        "ok", "ok", "ok", "corrupt", "missing", "denied"
    ]  # fmt: skip
    for item in out[:3]:
        assert item["features"] > 0 and item["error"] == ""
        assert item["map_min"] <= item["map_median"] <= item["map_max"]
        assert item["score_seconds"] > 0 and item["seconds"] >= item["score_seconds"]
        assert item["path"].startswith(str(confined))
    for item in out[3:]:
        assert item["features"] is None and item["error"]
    assert "outside the data roots" in out[5]["error"] or "'..'" in out[5]["error"]
    json.dumps(out)  # JSON-able as it is


def test_score_focus_equals_local_scoring(confined, section_refs):
    out = functions.score_focus(section_refs)
    local = [score_one(str(confined / r), FocusParams())[0] for r in section_refs]
    assert [i["features"] for i in out] == [r.features for r in local]
    # the defocused sections score lowest
    order = np.argsort([i["features"] for i in out])
    assert set(order[:2]) == {i for i, d in enumerate(DEFOCUS) if d > 1}


def test_score_focus_absolute_path_outside_roots_is_denied(confined):
    secret = str(confined.parent / "outside" / "secret.tif")
    (item,) = functions.score_focus([secret])
    assert item["status"] == "denied" and "outside the data roots" in item["error"]


def test_score_focus_returns_scores_not_verdicts(confined, section_refs):
    """Judging is the caller's run (FocusRun): the endpoint sends scores only."""
    out = functions.score_focus(section_refs)
    assert all(item["verdict"] == "" for item in out)
    with pytest.raises(TypeError):
        functions.score_focus(section_refs, None, {"slope": 1.0})  # type: ignore[call-arg]


def test_score_focus_stack_gives_pages(confined):
    import tifffile

    from scopefx.samples import bundled_image

    stack = (np.stack([bundled_image("camera", size=128)] * 2) * 255).astype(np.uint8)
    tifffile.imwrite(confined / "stack.tif", stack)
    (item,) = functions.score_focus(["stack.tif"])
    assert item["status"] == "ok" and len(item["pages"]) == 2
    assert [p["page"] for p in item["pages"]] == [0, 1]


def test_score_focus_bad_batch_arguments_raise(confined):
    with pytest.raises(ConfigError, match="refs must be a list"):
        functions.score_focus("run1/section_0000.tif")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="unknown focus parameter"):
        functions.score_focus(["run1/section_0000.tif"], {"n_scales_typo": 3})
    (item,) = functions.score_focus([42])  # type: ignore[list-item]
    assert item["status"] == "config" and "must be a string" in item["error"]


def test_fuse_mosaic_equals_local_fuse(confined, tmp_path, monkeypatch):
    out = functions.fuse_mosaic({"tiles": "mosaic/tiles.csv", "output": "out/a.ome.zarr"})
    assert out["output"] == "out/a.ome.zarr" and out["n_tiles"] == 9
    assert out["chunks_written"] >= 1 and set(out["timings"]) == {"plan_s", "fuse_s"}
    assert out["cluster"] is None  # no SCOPEFX_CLUSTER here
    json.dumps(out)
    monkeypatch.setenv("SCOPEFX_OUTPUT_ROOTS", f"{confined}{os.pathsep}{tmp_path}")
    local = fuse(confined / "mosaic" / "tiles.csv", tmp_path / "local.ome.zarr")
    assert out["shape"] == list(local.shape)
    _same_levels(confined / "out" / "a.ome.zarr", tmp_path / "local.ome.zarr")


def test_fan_out_plan_regions_finish_equals_one_call(confined):
    job = {"tiles": "mosaic/tiles.csv", "output": "out/fan.ome.zarr", "params": {"chunk_px": 64}}
    planned = functions.plan_mosaic(job, 5)
    assert planned["plan"] == "out/fan.ome.zarr" and planned["state"] == "new"
    assert len(planned["regions"]) == 5 and planned["regions"][-1]["stop"] == planned["chunks"]
    json.dumps(planned)
    done = [functions.fuse_region(planned["plan"], r) for r in planned["regions"][:3]]
    assert sum(d["written"] for d in done) == planned["regions"][2]["stop"]
    again = functions.fuse_region(planned["plan"], planned["regions"][0])  # idempotent
    assert again["written"] == 0 and again["skipped"] == planned["regions"][0]["stop"]
    # two regions never ran (lost tasks): finish writes them, then the pyramid
    summary = functions.finish_mosaic(planned["plan"])
    assert summary["chunks_resumed"] >= planned["regions"][2]["stop"]
    one = functions.fuse_mosaic({**job, "output": "out/one.ome.zarr"})
    assert one["shape"] == summary["shape"] and one["levels"] == summary["levels"]
    _same_levels(confined / "out" / "fan.ome.zarr", confined / "out" / "one.ome.zarr")
    with pytest.raises(ConfigError, match="already finished"):
        functions.fuse_region(planned["plan"], planned["regions"][0])


def test_fan_out_refuses_a_store_that_is_no_longer_its_plan(confined):
    """Between plan_mosaic and its regions another job replaced the store (``overwrite``):
    the regions and the finish of the first plan are refused, and write nothing into it."""
    job = {"tiles": "mosaic/tiles.csv", "output": "out/swap.ome.zarr", "params": {"chunk_px": 64}}
    first = functions.plan_mosaic(job, 3)
    other = {**job, "params": {"chunk_px": 32}, "options": {"overwrite": True}}
    second = functions.plan_mosaic(other, 3)
    assert isinstance(first["fingerprint"], str) and len(first["fingerprint"]) >= 32
    assert first["fingerprint"] != second["fingerprint"]
    json.dumps(first)
    with pytest.raises(ConfigError, match=r"no longer the mosaic.*plan the mosaic again"):
        functions.fuse_region(first["plan"], first["regions"][0], None, first["fingerprint"])
    with pytest.raises(ConfigError, match=r"no longer the mosaic that was planned"):
        functions.finish_mosaic(first["plan"], None, None, first["fingerprint"])
    with pytest.raises(ConfigError, match=r"fingerprint must be the string"):
        functions.fuse_region(first["plan"], first["regions"][0], None, 42)
    # the store's own plan is untouched by the refused tasks and runs with its fingerprint
    done = functions.fuse_region(second["plan"], second["regions"][0], None, second["fingerprint"])
    assert done["skipped"] == 0 and done["written"] == second["regions"][0]["stop"]
    summary = functions.finish_mosaic(second["plan"], None, None, second["fingerprint"])
    assert summary["shape"] == second["shape"]


def test_the_task_time_limit_stops_a_batch_between_items(confined, section_refs, monkeypatch):
    """SCOPEFX_TASK_TIMEOUT_S (an endpoint setting) bounds a focus task: checked between
    items, so what was scored comes back and the rest carry status "limit" naming the
    setting. A limit already passed when the task starts still scores the first reference."""
    monkeypatch.setenv("SCOPEFX_TASK_TIMEOUT_S", "1e-9")
    items = functions.score_focus(section_refs)
    assert [i["ref"] for i in items] == section_refs
    assert [i["status"] for i in items] == ["ok"] + ["limit"] * (len(section_refs) - 1)
    assert items[0]["features"] == functions.score_focus(section_refs[:1])[0]["features"]
    assert "SCOPEFX_TASK_TIMEOUT_S" in items[1]["error"]
    assert (
        f"{len(section_refs) - 1} of {len(section_refs)} references were not scored"
        in (items[1]["error"])
    )
    monkeypatch.delenv("SCOPEFX_TASK_TIMEOUT_S")
    assert {i["status"] for i in functions.score_focus(section_refs)} == {"ok"}


def test_the_task_time_limit_stops_a_fusion_between_chunks(confined, monkeypatch):
    """The same limit on a fusion region: it stops after the chunk in flight with a
    ResourceLimitError naming the setting; the chunks written stay recorded, so sending the
    region again finishes it without rewriting them."""
    job = {"tiles": "mosaic/tiles.csv", "output": "out/clock.ome.zarr", "params": {"chunk_px": 64}}
    planned = functions.plan_mosaic(job, 1)
    (region,) = planned["regions"]
    monkeypatch.setenv("SCOPEFX_TASK_TIMEOUT_S", "1e-9")
    with pytest.raises(ResourceLimitError, match=r"fuse_region .*SCOPEFX_TASK_TIMEOUT_S.*kept"):
        functions.fuse_region(planned["plan"], region, 1, planned["fingerprint"])
    with pytest.raises(ResourceLimitError, match=r"fuse_mosaic .*SCOPEFX_TASK_TIMEOUT_S"):
        functions.fuse_mosaic({**job, "output": "out/clock_whole.ome.zarr"})
    monkeypatch.delenv("SCOPEFX_TASK_TIMEOUT_S")
    again = functions.fuse_region(planned["plan"], region, 1, planned["fingerprint"])
    assert again["skipped"] >= 1 and again["written"] < region["stop"]
    assert again["skipped"] + again["written"] == region["stop"] == planned["chunks"]


def test_the_task_time_limit_of_a_fusion_counts_its_planning(confined, monkeypatch):
    """The task's time starts with the task, not after planning: a fusion whose planning
    (registration, a flat-field estimate) used the whole limit stops at its first chunk.
    The task clock is made to jump 120 s during planning, against a 60 s limit."""
    from scopefx.io import _limits
    from scopefx.remote import _tasks

    real_prepared, real_monotonic, skipped = _tasks._prepared, time.monotonic, [0.0]

    def slow_planning(job):
        skipped[0] = 120.0
        return real_prepared(job)

    monkeypatch.setattr(_tasks, "_prepared", slow_planning)
    clock = types.SimpleNamespace(monotonic=lambda: real_monotonic() + skipped[0])
    monkeypatch.setattr(_limits, "time", clock)  # the task clock's time only
    monkeypatch.setenv("SCOPEFX_TASK_TIMEOUT_S", "60")
    job = {"tiles": "mosaic/tiles.csv", "output": "out/late.ome.zarr", "params": {"chunk_px": 64}}
    with pytest.raises(ResourceLimitError, match=r"fuse_mosaic stopped after 12\d\.?\d* s"):
        functions.fuse_mosaic(job)


def test_mosaic_refs_are_confined(confined):
    with pytest.raises(AccessDeniedError, match=r"'\.\.'"):
        functions.fuse_mosaic({"tiles": "../outside/t.csv", "output": "out/x.ome.zarr"})
    with pytest.raises(AccessDeniedError, match="outside the output roots"):
        functions.fuse_mosaic({"tiles": "mosaic/tiles.csv", "output": "/tmp/elsewhere.ome.zarr"})
    # a table inside the roots that names a tile outside them
    secret = confined.parent / "outside" / "secret.tif"
    (confined / "evil.csv").write_text(f"path,x,y\n{secret},0,0\n")
    with pytest.raises(AccessDeniedError, match=r"secret\.tif"):
        functions.fuse_mosaic({"tiles": "evil.csv", "output": "out/evil.ome.zarr"})
    assert not (confined / "out" / "evil.ome.zarr").exists()


def test_mosaic_job_validation(confined):
    with pytest.raises(ConfigError, match="unknown mosaic job key"):
        functions.fuse_mosaic({"tiles": "t.csv", "output": "o.ome.zarr", "blend": "max"})
    with pytest.raises(ConfigError, match="needs 'output'"):
        functions.fuse_mosaic({"tiles": "t.csv"})
    with pytest.raises(ConfigError, match="a mosaic job is a dict"):
        functions.fuse_mosaic(["t.csv"])  # type: ignore[arg-type]


def test_endpoint_info(confined):
    import scopefx

    info = functions.endpoint_info()
    assert info["scopefx"] == scopefx.__version__
    assert info["backend"] in ("numpy", "cupy") and isinstance(info["gpus"], list)
    assert info["device"] == ("gpu" if info["gpus"] else "cpu")  # SCOPEFX_DEVICE unset: auto
    assert (info["backend"] == "cupy") == (info["device"] != "cpu")
    assert info["data_roots"] == [str(confined)]
    assert info["functions"] == list(FUNCTION_NAMES)
    json.dumps(info)


def test_the_endpoint_s_device_setting_decides_where_it_scores(confined, section_refs, monkeypatch):
    monkeypatch.setenv("SCOPEFX_DEVICE", "cpu")
    assert functions.endpoint_info()["device"] == "cpu"
    items = functions.score_focus(section_refs[:2])
    assert [i["status"] for i in items] == ["ok", "ok"]
    monkeypatch.setenv("SCOPEFX_DEVICE", "tpu")  # the administrator's typo: the batch says so
    with pytest.raises(ConfigError, match="SCOPEFX_DEVICE must be"):
        functions.score_focus(section_refs[:2])
    info = functions.endpoint_info()  # and the endpoint's description shows it (it raised)
    assert info["device"] is None and info["device_error"].startswith("SCOPEFX_DEVICE must be")
    json.dumps(info)
    if not list_gpus():
        # a GPU named where there is none: every batch says so, before any image is read
        monkeypatch.setenv("SCOPEFX_DEVICE", "gpu")
        with pytest.raises(DeviceUnavailableError, match=r"^SCOPEFX_DEVICE=gpu: "):
            functions.score_focus(section_refs[:2])
        info = functions.endpoint_info()
        assert info["device"] == "gpu" and info["device_error"].startswith("SCOPEFX_DEVICE=gpu")


@pytest.mark.parametrize("name", FUNCTION_NAMES)
def test_every_function_round_trips_through_the_sdk_serializer(name):
    """Serialized as registration serializes it, deserialized as the endpoint does."""
    pytest.importorskip("globus_compute_sdk")
    from globus_compute_sdk.sdk.client import FunctionRegistrationData
    from globus_compute_sdk.serialize import ComputeSerializer

    fn = getattr(functions, name)
    serde = ComputeSerializer()
    data = FunctionRegistrationData(function=fn, serializer=serde)
    (buffer,) = serde.unpack_buffers(data.function_code)
    restored = serde.deserialize(buffer)
    assert restored.__name__ == name and restored.__doc__ == fn.__doc__
    assert len(data.function_code) < 100_000  # far below the 10 MB payload limit
    if name == "endpoint_info":
        assert restored()["functions"] == list(FUNCTION_NAMES)


def test_functions_import_inside_their_bodies():
    import inspect

    for name in FUNCTION_NAMES:
        source = inspect.getsource(getattr(functions, name))
        body = source.split('"""')[-1]
        assert "from scopefx.remote import _tasks" in body, name


def test_a_remote_caller_cannot_ask_for_more_threads_than_the_host_has(confined, monkeypatch):
    from scopefx.remote import _tasks

    monkeypatch.setattr(_tasks.os, "cpu_count", lambda: 2)
    assert _tasks._workers(100_000) == 2 and _tasks._workers(1) == 1
    for bad in (0, -3, "8", True, 2.5):
        with pytest.raises(ConfigError, match="workers must be an integer >= 1"):
            _tasks._workers(bad)
    job = {"tiles": "mosaic/tiles.csv", "output": "out/w.ome.zarr", "workers": "lots"}
    with pytest.raises(ConfigError, match="workers must be an integer"):
        functions.fuse_mosaic(job)
    planned = functions.plan_mosaic({**job, "workers": 1_000_000}, 2)
    with pytest.raises(ConfigError, match="workers must be an integer"):
        functions.fuse_region(planned["plan"], planned["regions"][0], "many")
    with pytest.raises(ConfigError, match="a region is"):
        functions.fuse_region(planned["plan"], "0:5", 1)  # type: ignore[arg-type]
