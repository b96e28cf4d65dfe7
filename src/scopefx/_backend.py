"""The one seam between NumPy/SciPy and CuPy/cupyx.

Kernels are written once against the NumPy API and take their array namespace (``xp``), FFT
module (``fft``) and ``ndimage`` from a :class:`Backend`. The backend is chosen from the input
array (a CuPy array runs on its GPU) or from an explicit ``device=``. CuPy is imported only when
a GPU is asked for or a CuPy array is seen: importing scopefx never touches CUDA.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np

from .errors import ConfigError, DeviceUnavailableError

log = logging.getLogger(__name__)

__all__ = ["Backend", "get_backend", "is_cupy_array", "list_gpus", "to_numpy"]


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
    device : {None, "cpu", "gpu", "cuda", "cuda:N"}, optional
        Overrides the choice from ``array``. ``None`` follows the array.

    Raises
    ------
    ConfigError
        ``device`` is not one of the accepted names.
    DeviceUnavailableError
        A GPU was asked for and CuPy or a CUDA device is missing.
    """
    if device is None:
        return _cupy_backend() if is_cupy_array(array) else _numpy_backend()
    name = device.lower()
    if name == "cpu":
        return _numpy_backend()
    if name in ("gpu", "cuda") or name.startswith("cuda:"):
        backend = _cupy_backend()
        if name.startswith("cuda:"):
            try:
                index = int(name.split(":", 1)[1])
            except ValueError:
                raise ConfigError(
                    f"device must be 'cuda:N' with an integer N, got {device!r}"
                ) from None
            backend.xp.cuda.Device(index).use()
        return backend
    raise ConfigError(f"device must be None, 'cpu', 'gpu', 'cuda' or 'cuda:N', got {device!r}")


def default_backend_name() -> str:
    """The backend work lands on by default here: ``"cupy"`` where a CUDA device is usable,
    else ``"numpy"``."""
    return "cupy" if list_gpus() else "numpy"


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
