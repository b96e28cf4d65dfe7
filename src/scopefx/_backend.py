"""The one seam between NumPy/SciPy and CuPy/cupyx.

Kernels are written once against the NumPy API and take their array namespace (``xp``), FFT
module (``fft``) and ``ndimage`` from a :class:`Backend`. The backend is chosen from the input
array (a CuPy array runs on its GPU) or from an explicit ``device=``. CuPy is imported only when
a GPU is asked for or a CuPy array is seen: importing scopefx never touches CUDA.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np

from .errors import ConfigError, DeviceUnavailableError

log = logging.getLogger(__name__)

__all__ = [
    "DEVICE_ENV",
    "Backend",
    "backend_name",
    "checked_device",
    "default_device",
    "get_backend",
    "is_cupy_array",
    "is_device_out_of_memory",
    "list_gpus",
    "release_device_memory",
    "to_numpy",
]

#: Environment variable naming where files are scored when no device is named: ``auto`` (the
#: default: the GPU where CuPy sees one, else the CPU), ``cpu``, ``gpu`` or ``cuda:N``.
DEVICE_ENV = "SCOPEFX_DEVICE"


@dataclass(frozen=True)
class Backend:
    """Array namespace, FFT and ndimage modules of one device."""

    name: str  # "numpy" or "cupy"
    xp: ModuleType
    fft: ModuleType
    ndimage: ModuleType

    @property
    def is_gpu(self) -> bool:
        return self.name == "cupy"

    @property
    def device_id(self) -> int:
        """The device arrays are made on: -1 for host memory, else the current CUDA device."""
        return int(self.xp.cuda.Device().id) if self.is_gpu else -1

    def asarray(self, array: Any) -> Any:
        """Move ``array`` onto this backend's device (a no-op when it is already there)."""
        return self.xp.asarray(array)

    def to_numpy(self, array: Any) -> np.ndarray:
        return to_numpy(array)


def is_cupy_array(array: Any) -> bool:
    """Whether ``array`` is a CuPy array, decided without importing CuPy."""
    return type(array).__module__.split(".", 1)[0] == "cupy"


def to_numpy(array: Any) -> np.ndarray:
    """Return ``array`` as a NumPy array, copying from the GPU when needed."""
    if is_cupy_array(array):
        return array.get()
    return np.asarray(array)


@functools.cache
def _numpy_backend() -> Backend:
    import scipy.fft
    import scipy.ndimage

    return Backend("numpy", np, scipy.fft, scipy.ndimage)


@functools.cache
def _cupy_backend() -> Backend:
    try:
        import cupy
        import cupyx.scipy.fft
        import cupyx.scipy.ndimage
    except ImportError as exc:  # pragma: no cover - depends on the machine
        raise DeviceUnavailableError(
            "device='gpu' needs CuPy: install scopefx[gpu] on a machine with CUDA 12, "
            f"or use device='cpu' ({exc})"
        ) from exc
    try:
        n_devices = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # pragma: no cover - depends on the machine
        raise DeviceUnavailableError(
            f"CuPy is installed but no CUDA device answers: {exc}"
        ) from exc
    if n_devices < 1:  # pragma: no cover - depends on the machine
        raise DeviceUnavailableError("CuPy is installed but there is no CUDA device")
    return Backend("cupy", cupy, cupyx.scipy.fft, cupyx.scipy.ndimage)


def get_backend(array: Any = None, *, device: str | None = None) -> Backend:
    """Pick the backend for ``array`` or for an explicit ``device``.

    Parameters
    ----------
    array : array-like, optional
        A CuPy array selects the GPU backend; anything else selects NumPy.
    device : {None, "auto", "cpu", "gpu", "cuda", "cuda:N"}, optional
        Overrides the choice from ``array``. ``None`` follows the array; ``"auto"`` is the
        GPU where CuPy sees one, else the CPU.

    Raises
    ------
    ConfigError
        ``device`` is not one of the accepted names.
    DeviceUnavailableError
        A GPU was asked for and CuPy or a CUDA device is missing.
    """
    if device is None:
        return _cupy_backend() if is_cupy_array(array) else _numpy_backend()
    if not isinstance(device, str):
        raise ConfigError(f"device must be a string such as 'cpu' or 'gpu', got {device!r}")
    try:
        name = _check_device_name(device, "device")
    except ConfigError:
        raise ConfigError(
            f"device must be None, 'auto', 'cpu', 'gpu', 'cuda' or 'cuda:N', got {device!r}"
        ) from None
    if name == "auto":  # the GPU where there is one
        name = default_device("auto")
    if name == "cpu":
        return _numpy_backend()
    backend = _cupy_backend()
    if name.startswith("cuda:"):
        index = int(name[5:])
        count = int(backend.xp.cuda.runtime.getDeviceCount())
        if index >= count:
            raise DeviceUnavailableError(
                f"device {device!r}: there is no CUDA device {index} here ({count} device(s): "
                f"cuda:0 to cuda:{count - 1})"
            )
        backend.xp.cuda.Device(index).use()
    return backend


def _check_device_name(name: str, what: str) -> str:
    """``name`` lower-cased, or :class:`ConfigError` naming ``what`` when it names no device."""
    value = name.strip().lower()
    if value in ("auto", "cpu", "gpu", "cuda"):
        return value
    digits = value[5:]
    if value.startswith("cuda:") and digits.isascii() and digits.isdigit():
        return f"cuda:{int(digits)}"  # cuda:00 is cuda:0
    raise ConfigError(f"{what} must be 'auto', 'cpu', 'gpu', 'cuda' or 'cuda:N', got {name!r}")


def default_device(device: str | None = None) -> str:
    """Where work that reads its own pixels (files, references) runs: ``"cpu"`` or a GPU name.

    ``device`` (``None``, ``"auto"``, ``"cpu"``, ``"gpu"``, ``"cuda"``, ``"cuda:N"``) wins;
    ``None`` takes :data:`DEVICE_ENV` (an endpoint's administrator sets it), ``auto`` when
    unset. ``auto`` is the GPU where CuPy sees a CUDA device and runs on it, else the CPU; a
    GPU asked for by name must be there (:func:`checked_device` says why not).

    Raises
    ------
    ConfigError
        ``device`` or the variable names no device.
    """
    if device is None:
        raw = os.environ.get(DEVICE_ENV, "").strip() or "auto"
        value = _check_device_name(raw, DEVICE_ENV)
    elif isinstance(device, str):
        value = _check_device_name(device, "device")
    else:
        raise ConfigError(f"device must be a string such as 'cpu' or 'gpu', got {device!r}")
    if value == "auto":
        return "gpu" if _gpu_usable() else "cpu"
    return value


def checked_device(device: str | None = None) -> str:
    """:func:`default_device`, and the GPU it names is there and answers.

    Raises
    ------
    ConfigError
        ``device`` or :data:`DEVICE_ENV` names no device.
    DeviceUnavailableError
        It names a GPU that is not there; the message says where it was named (the argument,
        or the variable).
    """
    value = default_device(device)
    try:
        get_backend(device=value)
    except DeviceUnavailableError as exc:
        named = (
            f"{DEVICE_ENV}={os.environ.get(DEVICE_ENV, '').strip()}"
            if device is None
            else f"device {device!r}"
        )
        raise DeviceUnavailableError(f"{named}: {exc}") from exc
    return value


@functools.cache
def _gpu_usable() -> bool:
    """A CUDA device is seen, and CuPy runs on it: a small product and DCT, once per process
    (CuPy can list a device and still fail at its first kernel: no NVRTC, no cuFFT)."""
    if not list_gpus():
        return False
    try:
        backend = _cupy_backend()
        x = backend.xp.arange(64, dtype=backend.xp.float32).reshape(8, 8)
        float((x @ backend.fft.dctn(x, type=2)).sum())
    except Exception as exc:
        log.warning("a CUDA device is there but CuPy cannot run on it (%s): using the CPU", exc)
        return False
    return True


def backend_name(device: str) -> str:
    """The backend a device name (as :func:`default_device` gives it) runs on."""
    return "numpy" if device == "cpu" else "cupy"


def is_device_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is CuPy running out of device memory (an allocation, or cuFFT's work
    area), decided without importing CuPy."""
    module = type(exc).__module__.split(".", 1)[0]
    if module not in ("cupy", "cupy_backends"):
        return False
    return type(exc).__name__ == "OutOfMemoryError" or "ALLOC_FAILED" in str(exc)


def release_device_memory() -> None:
    """Hand the blocks CuPy's memory pools keep for reuse back to the driver (nothing when CuPy
    was never imported)."""
    cupy = sys.modules.get("cupy")
    if cupy is None:
        return
    cupy.get_default_memory_pool().free_all_blocks()
    cupy.get_default_pinned_memory_pool().free_all_blocks()
    fft_cache = getattr(getattr(cupy.fft, "config", None), "get_plan_cache", None)
    if fft_cache is not None:
        fft_cache().clear()


def list_gpus() -> list[dict[str, Any]]:
    """CUDA devices CuPy sees (empty without CuPy or a device); never raises."""
    import importlib.util

    if importlib.util.find_spec("cupy") is None:
        return []
    try:
        import cupy

        out = []
        for i in range(cupy.cuda.runtime.getDeviceCount()):
            props = cupy.cuda.runtime.getDeviceProperties(i)
            name = props["name"]
            out.append(
                {
                    "index": i,
                    "name": name.decode() if isinstance(name, bytes) else str(name),
                    "memory_gib": round(props["totalGlobalMem"] / 2**30, 1),
                }
            )
        return out
    except Exception as exc:  # CuPy without a driver: report, don't fail
        log.debug("no CUDA devices: %s", exc)
        return []
