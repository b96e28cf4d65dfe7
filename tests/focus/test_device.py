"""Where files are scored: ``device=``, ``SCOPEFX_DEVICE``, the GPU by default where there is
one, the CPU when the GPU runs out of memory. The GPU tests run where CuPy sees a device."""

from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest
import tifffile

import scopefx
from scopefx import FocusParams, samples, score_files
from scopefx._backend import (
    DEVICE_ENV,
    default_device,
    get_backend,
    is_device_out_of_memory,
    list_gpus,
)
from scopefx.cli import main
from scopefx.errors import ConfigError, DeviceUnavailableError
from scopefx.focus import _batch, score_one


def _has_gpu() -> bool:
    return bool(list_gpus())


def gpu(test):
    """Marked ``gpu`` (``pytest -m gpu`` selects it) and skipped without a CUDA device."""
    skip = pytest.mark.skipif(not _has_gpu(), reason="no CUDA device that CuPy sees")
    return pytest.mark.gpu(skip(test))


@pytest.fixture
def sections(tmp_path):
    sharp = samples.bundled_image("immunohistochemistry", size=256)
    paths = []
    for i, amount in enumerate((0.0, 0.0, 3.0, 0.0)):
        path = tmp_path / f"s{i}.tif"
        tifffile.imwrite(path, samples.acquire(samples.defocus(sharp, amount), seed=i))
        paths.append(path)
    return paths


def test_default_device_reads_the_argument_then_the_environment(monkeypatch):
    monkeypatch.delenv(DEVICE_ENV, raising=False)
    auto = "gpu" if _has_gpu() else "cpu"
    assert default_device() == auto
    assert default_device("auto") == auto
    assert default_device("CPU") == "cpu"
    assert default_device("cuda:1") == "cuda:1"  # named: checked when used
    monkeypatch.setenv(DEVICE_ENV, "cpu")
    assert default_device() == "cpu"
    assert default_device("gpu") == "gpu"  # the argument wins
    monkeypatch.setenv(DEVICE_ENV, " ")
    assert default_device() == auto  # blank is unset
    monkeypatch.setenv(DEVICE_ENV, "tpu")
    with pytest.raises(ConfigError, match="SCOPEFX_DEVICE must be 'auto', 'cpu'"):
        default_device()
    for bad in ("cuda:x", "cuda:", "gpu0", ""):
        with pytest.raises(ConfigError, match="device must be"):
            default_device(bad)
    with pytest.raises(ConfigError, match="device must be a string"):
        default_device(0)  # type: ignore[arg-type]


def test_score_files_refuses_a_bad_device_before_any_item(sections, monkeypatch):
    with pytest.raises(ConfigError, match="device must be"):
        next(score_files(sections, device="tpu"))
    monkeypatch.setenv(DEVICE_ENV, "tpu")
    with pytest.raises(ConfigError, match="SCOPEFX_DEVICE"):
        next(score_files(sections))


def test_device_names_are_read_alike_everywhere():
    assert default_device(" CUDA:00 ") == "cuda:0"  # one GPU, one name (and one lock)
    assert get_backend(device=" CPU ").name == "numpy"  # as score_files reads it
    for bad in ("cuda:\u0663", "cuda:-1", "cuda:1.0"):  # an Arabic-Indic 3 is no index
        with pytest.raises(ConfigError):
            default_device(bad)
        with pytest.raises(ConfigError):
            get_backend(device=bad)


@pytest.mark.skipif(_has_gpu(), reason="a GPU is here")
def test_a_gpu_named_where_there_is_none_stops_the_batch_with_the_reason(sections, monkeypatch):
    with pytest.raises(DeviceUnavailableError, match=r"^device 'gpu': ") as info:
        next(score_files(sections, device="gpu"))
    assert "scopefx[gpu]" in str(info.value) or "CUDA" in str(info.value)
    monkeypatch.setenv(DEVICE_ENV, "gpu")
    with pytest.raises(DeviceUnavailableError, match=r"^SCOPEFX_DEVICE=gpu: "):
        next(score_files(sections))  # the message says where the GPU was named
    records = list(score_files(sections, device="cpu"))  # the variable is overridden
    assert all(r.ok for r in records)


def test_the_cpu_is_the_default_without_a_gpu_and_scores_agree(sections, monkeypatch):
    monkeypatch.delenv(DEVICE_ENV, raising=False)
    default = [r.features for r in score_files(sections)]
    on_cpu = [r.features for r in score_files(sections, device="cpu")]
    if not _has_gpu():
        assert default == on_cpu
    assert default[2] < min(default[:2])  # the defocused section still stands out


class _FakeOutOfMemory(MemoryError):
    """What CuPy raises when an allocation fails (its type and module, not CuPy's class)."""


_FakeOutOfMemory.__name__ = "OutOfMemoryError"
_FakeOutOfMemory.__module__ = "cupy.cuda.memory"


def test_out_of_memory_is_recognised_by_type_and_module():
    assert is_device_out_of_memory(_FakeOutOfMemory("out of memory"))
    assert not is_device_out_of_memory(MemoryError("host"))
    cufft = type("CuFFTError", (RuntimeError,), {"__module__": "cupy.cuda.cufft"})
    assert is_device_out_of_memory(cufft("CUFFT_ALLOC_FAILED"))
    assert not is_device_out_of_memory(cufft("CUFFT_INVALID_PLAN"))


def test_an_image_the_gpu_has_no_memory_for_is_scored_on_the_cpu(sections, monkeypatch, caplog):
    """The GPU call fails for lack of memory: the same file is scored on the CPU, logged."""
    real = _batch.focus_score
    devices = []

    def on_a_full_gpu(plane, *, params, device):
        devices.append(device)
        if device != "cpu":
            raise _FakeOutOfMemory("Out of memory allocating 268,435,456 bytes")
        return real(plane, params=params, device=device)

    monkeypatch.setattr(_batch, "focus_score", on_a_full_gpu)
    monkeypatch.setattr(_batch, "_device_lock", lambda device: contextlib.nullcontext())
    dropped = []
    monkeypatch.setattr(_batch, "drop_device_caches", lambda: dropped.append(True))
    (record,) = score_one(str(sections[0]), FocusParams(), device="gpu")
    assert record.ok and devices == ["gpu", "cpu"]
    assert dropped == [True]  # the GPU's cached plans go before the CPU tries
    assert "out of GPU memory" in caplog.text and "s0.tif" in caplog.text
    monkeypatch.setattr(_batch, "focus_score", real)
    (on_cpu,) = score_one(str(sections[0]), FocusParams(), device="cpu")
    assert record.features == on_cpu.features


def test_another_gpu_error_is_the_item_s_error_not_a_fallback(sections, monkeypatch):
    def broken(plane, *, params, device):
        raise RuntimeError("cudaErrorIllegalAddress")

    monkeypatch.setattr(_batch, "focus_score", broken)
    monkeypatch.setattr(_batch, "_device_lock", lambda device: contextlib.nullcontext())
    (record,) = score_one(str(sections[0]), FocusParams(), device="gpu")
    assert record.status == "error" and "cudaErrorIllegalAddress" in record.error


def test_cli_device_option(sections, monkeypatch):
    out = io.StringIO()
    assert main(["focus", *map(str, sections), "--device", "cpu", "-q"], out=out) == 0
    with pytest.raises(SystemExit) as info:
        main(["focus", str(sections[0]), "--device", "tpu"], out=io.StringIO())
    assert info.value.code == 2
    with pytest.raises(SystemExit) as info:  # an endpoint scores where its own setting says
        main(["focus", "run1/s0.tif", "--endpoint", "edge", "--device", "gpu"], out=io.StringIO())
    assert info.value.code == 2


def test_cli_device_option_errors_name_the_option(sections, capsys):
    with pytest.raises(SystemExit):
        main(["focus", str(sections[0]), "--device", "tpu"], out=io.StringIO())
    assert "device must be 'auto', 'cpu'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["focus", "a.tif", "--endpoint", "edge", "--device", "gpu"], out=io.StringIO())
    assert "SCOPEFX_DEVICE" in capsys.readouterr().err


# ---------------------------------------------------------------------------- on a real GPU


@gpu
def test_files_scored_on_the_gpu_agree_with_the_cpu(sections):
    on_gpu = list(score_files(sections, device="gpu", workers=2))
    on_cpu = list(score_files(sections, device="cpu"))
    assert all(r.ok for r in on_gpu)
    for g, c in zip(on_gpu, on_cpu, strict=True):
        assert abs(g.features - c.features) <= max(2, 0.005 * c.features), (g.path, g, c)
    assert [g.verdict for g in on_gpu] == [c.verdict for c in on_cpu]


@gpu
def test_a_real_out_of_memory_on_the_gpu_falls_back_to_the_cpu(tmp_path):
    import cupy

    image = samples.acquire(samples.bundled_image("camera", size=2048), seed=0)
    path = tmp_path / "big.tif"
    tifffile.imwrite(path, image)
    (on_cpu,) = score_one(str(path), FocusParams(), device="cpu")
    pool = cupy.get_default_memory_pool()
    pool.free_all_blocks()
    pool.set_limit(size=8 * 2**20)  # a 2048^2 float32 plane is 16 MiB
    try:
        (record,) = score_one(str(path), FocusParams(), device="gpu")
    finally:
        pool.set_limit(size=0)
    assert record.ok and record.features == on_cpu.features
    scopefx.focus_score(np.asarray(image), device="gpu")  # the GPU works again afterwards


@gpu
@pytest.mark.parametrize("modality", ["em", "fluorescence", "brightfield"])
@pytest.mark.parametrize("mode", ["exact", "fast"])
def test_every_preset_on_the_gpu_gives_the_cpu_s_count(modality, mode):
    """Each preset's own steps run on CuPy too (the fluorescence noise model's masked
    dilation was a SciPy-only call: it raised NotImplementedError on the GPU)."""
    import cupy

    image = samples.acquire(samples.bundled_image("coins", size=512), photons=300, seed=3)
    on_cpu = scopefx.focus_score(image, modality=modality, mode=mode)
    on_gpu = scopefx.focus_score(cupy.asarray(image), modality=modality, mode=mode)
    assert on_gpu.features == pytest.approx(on_cpu.features, rel=0.005, abs=2)
    assert on_gpu.score == pytest.approx(on_cpu.score, rel=0.005)


def test_each_record_says_where_it_was_scored(sections, monkeypatch, tmp_path):
    """The CSV and JSON say which device scored each image: the CPU after a fallback."""
    from scopefx.focus import CSV_COLUMNS
    from scopefx.focus.csv import read_focus_csv

    records = list(score_files(sections, device="cpu"))
    assert [r.device for r in records] == ["cpu"] * len(sections)
    assert records[0].to_dict()["device"] == "cpu" and CSV_COLUMNS[-1] == "device"
    out = tmp_path / "focus.csv"
    assert main(["focus", str(sections[0]), "--device", "cpu", "-q", "--csv", str(out)],
                out=io.StringIO()) == 0  # fmt: skip
    assert [r["device"] for r in read_focus_csv(out)] == ["cpu"]
    real = _batch.focus_score

    def on_a_full_gpu(plane, *, params, device):
        if device != "cpu":
            raise _FakeOutOfMemory("Out of memory")
        return real(plane, params=params, device=device)

    monkeypatch.setattr(_batch, "focus_score", on_a_full_gpu)
    monkeypatch.setattr(_batch, "_device_lock", lambda device: contextlib.nullcontext())
    (fell_back,) = score_one(str(sections[0]), FocusParams(), device="gpu")
    assert fell_back.ok and fell_back.device == "cpu"
    (missing,) = score_one(str(tmp_path / "gone.tif"), FocusParams(), device="cpu")
    assert missing.status == "missing" and missing.device == ""
