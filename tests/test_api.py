"""The public surface, pinned: a change here is a deliberate API change."""

import subprocess
import sys

import numpy as np
import pytest

import scopefx
import scopefx.focus
import scopefx.fusion
import scopefx.io
import scopefx.remote
from scopefx import errors
from scopefx._backend import get_backend, is_cupy_array, to_numpy


def test_exported_members():
    assert scopefx.__all__ == [
        "Calibration",
        "Client",
        "FocusParams",
        "FocusRecord",
        "FocusResult",
        "FocusRun",
        "FuseOptions",
        "FusionParams",
        "FusionResult",
        "RunBaseline",
        "TileTable",
        "__version__",
        "focus_response",
        "focus_score",
        "fuse",
        "fuse_lazy",
        "prepare",
        "read_tile_table",
        "score_files",
    ]
    assert sorted(scopefx.focus.__all__) == scopefx.focus.__all__
    assert scopefx.fusion.__all__[:3] == ["fuse", "fuse_lazy", "prepare"]  # high-level first
    assert sorted(scopefx.fusion.__all__[3:]) == scopefx.fusion.__all__[3:]
    assert scopefx.remote.__all__[0] == "Client"
    assert sorted(scopefx.remote.__all__[1:]) == scopefx.remote.__all__[1:]
    modules = (scopefx, scopefx.focus, scopefx.fusion, scopefx.io, scopefx.remote, errors)
    for module in modules:
        for name in module.__all__:
            assert hasattr(module, name), (module.__name__, name)


def test_every_error_is_also_a_builtin():
    for name in errors.__all__:
        cls = getattr(errors, name)
        assert issubclass(cls, errors.ScopefxError)
        if cls is not errors.ScopefxError:
            builtin_bases = [
                b for b in cls.__mro__ if b.__module__ == "builtins" and b is not object
            ]
            assert any(b not in (Exception, BaseException) for b in builtin_bases), name


def test_import_has_no_side_effects(tmp_path):
    code = (
        "import sys, scopefx, scopefx.focus, scopefx.io, scopefx.remote, scopefx.cli; "
        "assert 'cupy' not in sys.modules; assert 'matplotlib.pyplot' not in sys.modules; "
        "print('ok')"
    )
    env = {"HOME": str(tmp_path), "PATH": "/usr/bin:/bin"}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "ok"
    assert list(tmp_path.iterdir()) == []  # nothing written to the home folder


def test_backend_follows_the_array_and_device():
    image = np.zeros((4, 4))
    assert get_backend(image).name == "numpy"
    assert get_backend(image, device="cpu").name == "numpy"
    assert not is_cupy_array(image)
    assert to_numpy(image) is image
    with pytest.raises(errors.ConfigError, match="device must be None, 'auto', 'cpu', 'gpu'"):
        get_backend(image, device="tpu")


def test_gpu_request_without_cupy_is_a_clear_error():
    try:
        import cupy  # noqa: F401
    except ImportError:
        with pytest.raises(errors.DeviceUnavailableError, match="scopefx\\[gpu\\]"):
            get_backend(device="gpu")
    else:
        pytest.skip("CuPy is installed here")


def test_version_matches_the_package_metadata():
    from importlib.metadata import version

    assert scopefx.__version__ == version("scopefx")
