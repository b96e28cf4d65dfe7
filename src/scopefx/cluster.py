"""dask clusters from a config file: local, SLURM or PBS (dask-jobqueue).

A cluster config is YAML or TOML, flat or under a ``cluster:`` key::

    kind: slurm            # local | slurm | pbs
    cores: 8               # per job (threads of its dask workers)
    processes: 1           # dask worker processes per job
    memory: 32GiB          # per job, shared out evenly among its processes
    walltime: "01:00:00"   # HH:MM:SS (SLURM also D-HH:MM:SS)
    queue: gpu             # SLURM partition / PBS queue
    account: lab42
    gpus: 1                # per job (--gpus / ngpus)
    jobs: 4                # jobs started (or, with adapt_max, the adaptive bounds below)
    adapt_min: 1
    adapt_max: 16
    job_extra_directives: ["--constraint=a100"]
    job_script_prologue: ["source $HOME/venvs/scopefx/bin/activate"]
    local_directory: /scratch/$USER/dask
    log_directory: /scratch/$USER/dask-logs

:func:`open_cluster` starts the cluster and a ``distributed.Client`` and always closes both
(cancelling every batch job it submitted) when the ``with`` block ends, even on an error.

Importing this module imports neither distributed nor dask-jobqueue, and nothing writes to the
user's home: dask-jobqueue writes ``~/.config/dask/jobqueue.yaml`` when it is imported, which
:func:`open_cluster` prevents.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import re
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from .errors import ConfigError

__all__ = ["CLUSTER_ENV", "ClusterSpec", "load_cluster_spec", "open_cluster"]

log = logging.getLogger(__name__)

#: Environment variable naming the cluster config an HPC endpoint's ``worker_init`` sets.
CLUSTER_ENV = "SCOPEFX_CLUSTER"
#: Environment variable with the batch account to charge, over the config's ``account``: a
#: facility endpoint shares one cluster config among its users, and sets each user's own.
ACCOUNT_ENV = "SCOPEFX_CLUSTER_ACCOUNT"
#: What a SLURM or PBS account name may be (the facility template's schema allows the same).
_ACCOUNT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")

Kind = Literal["local", "slurm", "pbs"]
#: HH:MM:SS, or D-HH:MM:SS (SLURM only; PBS has no day field). ``HH:MM`` is refused: sbatch and
#: qsub both read it as minutes:seconds.
_WALLTIME = re.compile(r"^(?:(?P<days>\d{1,3})-)?(?P<h>\d{1,3}):(?P<m>\d{2}):(?P<s>\d{2})$")
#: A number and a unit: without one dask reads bytes, and dask-jobqueue fails on the result.
_MEMORY = re.compile(r"^\d+(\.\d+)?\s*([KMGT]i?B|[KMGT])$", re.IGNORECASE)
_MIN_MEMORY = 2**20


@dataclass(frozen=True)
class ClusterSpec:
    """Where dask runs: a local cluster, or batch jobs on SLURM or PBS (see module docs)."""

    kind: Kind = "local"
    cores: int = 1
    processes: int = 1
    memory: str = "4GiB"
    walltime: str = "01:00:00"
    queue: str | None = None
    account: str | None = None
    gpus: int = 0
    jobs: int = 1
    adapt_min: int | None = None
    adapt_max: int | None = None
    job_extra_directives: tuple[str, ...] = ()
    job_script_prologue: tuple[str, ...] = ()
    local_directory: str | None = None
    log_directory: str | None = None
    interface: str | None = None
    start_timeout_s: float = 300.0
    extra: dict[str, Any] = field(default_factory=dict)
    """Further keyword arguments for the dask-jobqueue cluster class, as they are."""

    def __post_init__(self) -> None:
        if self.kind not in ("local", "slurm", "pbs"):
            raise ConfigError(f"cluster kind must be 'local', 'slurm' or 'pbs', got {self.kind!r}")
        for name in ("cores", "processes", "jobs"):
            value = getattr(self, name)
            if not _is_int(value) or value < 1:
                raise ConfigError(f"cluster {name} must be an integer >= 1, got {value!r}")
        if self.processes > self.cores:
            raise ConfigError(
                f"cluster processes ({self.processes}) cannot exceed cores ({self.cores}): each "
                "dask worker process needs at least one core"
            )
        if not _is_int(self.gpus) or self.gpus < 0:
            raise ConfigError(f"cluster gpus must be an integer >= 0, got {self.gpus!r}")
        _check_walltime(self.walltime, self.kind)
        _check_memory(self.memory)
        timeout = self.start_timeout_s
        if (
            not isinstance(timeout, int | float)
            or isinstance(timeout, bool)
            or not math.isfinite(timeout)
            or timeout <= 0
        ):
            raise ConfigError(
                f"cluster start_timeout_s must be a number of seconds > 0, got {timeout!r}"
            )
        lo, hi = self.adapt_min, self.adapt_max
        if (lo is None) != (hi is None):
            raise ConfigError("give both adapt_min and adapt_max, or neither")
        if lo is not None and hi is not None:
            if not _is_int(lo) or not _is_int(hi):
                raise ConfigError(
                    f"cluster adapt_min and adapt_max must be whole numbers of jobs, got {lo!r} "
                    f"and {hi!r}"
                )
            if not 0 <= lo <= hi or hi < 1:
                raise ConfigError(
                    f"need 0 <= adapt_min <= adapt_max and adapt_max >= 1, got {lo!r} and {hi!r}"
                )
        for name in ("job_extra_directives", "job_script_prologue"):
            value = getattr(self, name)
            if isinstance(value, str):
                object.__setattr__(self, name, (value,))
            else:
                object.__setattr__(self, name, tuple(str(v) for v in value))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: str = "cluster config") -> ClusterSpec:
        """Build from a mapping, refusing unknown keys with their names."""
        data = dict(data.get("cluster", data)) if isinstance(data, Mapping) else data
        if not isinstance(data, dict):
            raise ConfigError(f"{source} must be a mapping, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(
                f"{source}: unknown key(s) {unknown}; expected some of {sorted(known)}"
            )
        return cls(**data)

    @property
    def workers(self) -> int:
        """dask worker processes when ``jobs`` jobs run."""
        return self.jobs * self.processes

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["job_extra_directives"] = list(self.job_extra_directives)
        out["job_script_prologue"] = list(self.job_script_prologue)
        return out


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_walltime(walltime: object, kind: str) -> None:
    """Refuse a walltime that is not HH:MM:SS (D-HH:MM:SS on SLURM), out of range or under 1 min.

    ``HH:MM`` is refused, not read as hours: sbatch and qsub both read it as minutes:seconds.
    """
    expected = "HH:MM:SS, like '02:00:00'"
    if kind == "slurm":
        expected += " (or D-HH:MM:SS, like '1-12:00:00')"
    got = f"got {walltime!r}"
    if not isinstance(walltime, str):
        raise ConfigError(
            f"cluster walltime must be {expected}, {got} (quote it in YAML: 01:00:00 unquoted "
            "is read as a number)"
        )
    match = _WALLTIME.match(walltime)
    if match is None:
        if re.fullmatch(r"(\d+-)?\d+:\d+", walltime):
            got += " (sbatch and qsub read HH:MM as minutes:seconds)"
        raise ConfigError(f"cluster walltime must be {expected}, {got}")
    days, h, m, s = (int(match[k] or 0) for k in ("days", "h", "m", "s"))
    if match["days"] is not None and kind != "slurm":
        raise ConfigError(
            f"cluster walltime must be {expected} for kind {kind!r}, which has no day field, "
            f"{got}: write {days * 24 + h:02d}:{m:02d}:{s:02d}"
        )
    if m >= 60 or s >= 60 or (match["days"] is not None and h >= 24):
        raise ConfigError(
            f"cluster walltime must be {expected}, with minutes and seconds below 60 (and hours "
            f"below 24 after a day count), {got}"
        )
    if ((days * 24 + h) * 60 + m) < 1:
        raise ConfigError(
            f"cluster walltime must be {expected}, at least 00:01:00 (sbatch reads a zero "
            f"limit as no limit), {got}"
        )


def _check_memory(memory: object) -> None:
    """Refuse a memory size without a unit or under 1 MiB."""
    from dask.utils import parse_bytes

    if not isinstance(memory, str) or not _MEMORY.match(memory):
        raise ConfigError(
            f"cluster memory must be like '16GiB' (a number and a unit), got {memory!r}"
        )
    if parse_bytes(memory) < _MIN_MEMORY:
        raise ConfigError(f"cluster memory must be at least 1MiB, got {memory!r}")


def load_cluster_spec(path: str | os.PathLike[str]) -> ClusterSpec:
    """Read a cluster config (``.yaml``/``.yml`` or ``.toml``).

    Raises
    ------
    ConfigError
        Missing file, unreadable YAML/TOML, unknown keys or values out of range.
    """
    file = Path(path).expanduser()
    try:
        text = file.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read cluster config {str(file)!r}: {exc}") from None
    try:
        if file.suffix.lower() == ".toml":
            data: Any = tomllib.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text)
    except Exception as exc:
        raise ConfigError(f"cluster config {str(file)!r} is not valid: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"cluster config {str(file)!r} must hold a mapping of settings")
    return ClusterSpec.from_dict(data, source=f"cluster config {str(file)!r}")


def _jobqueue() -> Any:
    """Import dask-jobqueue without letting it write its config file into the home folder."""
    try:
        import dask.config

        write = dask.config.ensure_file
        dask.config.ensure_file = lambda *a, **k: None
        try:
            import dask_jobqueue
        finally:
            dask.config.ensure_file = write
    except ImportError:
        raise ConfigError(
            "SLURM and PBS clusters need dask-jobqueue and distributed: pip install 'scopefx[hpc]'"
        ) from None
    return dask_jobqueue


def _expand(path: str | None) -> str | None:
    return None if path is None else os.path.expanduser(os.path.expandvars(path))


#: distributed's nanny starts workers with MALLOC_TRIM_THRESHOLD_=65536, which makes glibc hand
#: every large array back to the kernel and map it fresh: fusion chunks ran 2.2x slower on such
#: workers (bench/scaleout.py). scopefx workers keep glibc's default instead.
_NANNY_ENV = "DASK_DISTRIBUTED__NANNY__PRE_SPAWN_ENVIRON"
_NANNY_ENV_VALUE = "{'MALLOC_TRIM_THRESHOLD_': None}"


def _make(spec: ClusterSpec) -> Any:
    if spec.kind == "local":
        import dask.config

        with dask.config.set({"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}):
            return _local_cluster(spec)
    return _jobqueue_cluster(spec)


def _local_cluster(spec: ClusterSpec) -> Any:
    from dask.utils import parse_bytes
    from distributed import LocalCluster

    # ``memory`` is per job, shared by its processes, as dask-jobqueue does on SLURM and PBS.
    return LocalCluster(
        n_workers=spec.workers,
        threads_per_worker=max(1, spec.cores // spec.processes),
        memory_limit=parse_bytes(spec.memory) // spec.processes,
        processes=True,
        local_directory=_expand(spec.local_directory),
        dashboard_address=":0",  # a free port, as for the batch-job clusters
        **spec.extra,
    )


def _jobqueue_cluster(spec: ClusterSpec) -> Any:
    jq = _jobqueue()
    directives = list(spec.job_extra_directives)
    options: dict[str, Any] = {
        "cores": spec.cores,
        "processes": spec.processes,
        "memory": spec.memory,
        "walltime": spec.walltime,
        "queue": spec.queue,
        "account": spec.account,
        "job_script_prologue": [
            f'export {_NANNY_ENV}="{_NANNY_ENV_VALUE}"',
            *spec.job_script_prologue,
        ],
        "local_directory": spec.local_directory,  # expanded in the job ($TMPDIR on the node)
        "log_directory": _expand(spec.log_directory),  # made here, by the submitting side
        "interface": spec.interface,
        # a free port: several users (or runs) share a login node, 8787 would collide
        "scheduler_options": {"dashboard_address": ":0"},
    }
    if spec.kind == "slurm":
        if spec.gpus:
            directives.append(f"--gpus={spec.gpus}")
        cls = jq.SLURMCluster
    else:
        if spec.gpus:
            # A resource_spec given replaces dask-jobqueue's select=1:ncpus=N:mem=M whole, so
            # the memory is repeated here (in dask-jobqueue's own PBS form).
            from dask.utils import parse_bytes
            from dask_jobqueue.pbs import pbs_format_bytes_ceil  # imported by _jobqueue()

            mem = pbs_format_bytes_ceil(parse_bytes(spec.memory))
            options["resource_spec"] = f"select=1:ncpus={spec.cores}:ngpus={spec.gpus}:mem={mem}"
        cls = jq.PBSCluster
    options["job_extra_directives"] = directives
    options.update(spec.extra)
    return cls(**{k: v for k, v in options.items() if v is not None})


@contextlib.contextmanager
def open_cluster(spec: ClusterSpec | str | os.PathLike[str]) -> Iterator[Any]:
    """Start the cluster, yield a ``distributed.Client`` on it, and always shut both down.

    For SLURM and PBS the jobs are submitted (``jobs``, or adaptive between ``adapt_min``
    and ``adapt_max``) and the first worker is awaited for ``start_timeout_s``; on exit every
    job is cancelled, whatever happened inside the block.

    Raises
    ------
    ConfigError
        The spec is invalid or dask-jobqueue is missing.
    TimeoutError
        No worker joined within ``start_timeout_s`` (queue full, wrong partition...).
    """
    if not isinstance(spec, ClusterSpec):
        spec = load_cluster_spec(spec)
    try:
        from distributed import Client
    except ImportError:
        raise ConfigError("dask clusters need distributed: pip install 'scopefx[hpc]'") from None
    cluster = _make(spec)
    client = None
    try:
        if spec.kind != "local":
            if spec.adapt_max is not None:
                cluster.adapt(minimum_jobs=spec.adapt_min, maximum_jobs=spec.adapt_max)
            else:
                cluster.scale(jobs=spec.jobs)
            log.info("%s job script:\n%s", spec.kind, cluster.job_script())
        client = Client(cluster)
        if spec.kind != "local":
            try:
                client.wait_for_workers(1, timeout=spec.start_timeout_s)
            except TimeoutError:
                raise TimeoutError(
                    f"no dask worker joined within {spec.start_timeout_s:g} s: check the "
                    f"{spec.kind.upper()} queue ({spec.queue or 'default'}), the job logs "
                    f"({spec.log_directory or 'the working folder'}) and the job script "
                    "(logged at INFO)"
                ) from None
        yield client
    finally:
        if client is not None:
            client.close()
        cluster.close()


def cluster_from_env(environ: Mapping[str, str] | None = None) -> ClusterSpec | None:
    """The cluster config named by ``SCOPEFX_CLUSTER``, if set, with the account
    ``SCOPEFX_CLUSTER_ACCOUNT`` names, if set, over its own (on a facility endpoint every
    user's jobs were charged to the account of the shared config).

    Raises
    ------
    ConfigError
        The account is not a plain account name (letters, digits, ``_.-``, at most 64).
    """
    env = os.environ if environ is None else environ
    value = env.get(CLUSTER_ENV, "").strip()
    if not value:
        return None
    spec = load_cluster_spec(value)
    account = env.get(ACCOUNT_ENV, "").strip()
    if not account:
        return spec
    if not _ACCOUNT.fullmatch(account):
        raise ConfigError(
            f"{ACCOUNT_ENV} must be a batch account name (letters, digits, '_', '.', '-'; at "
            f"most 64), got {account[:80]!r}"
        )
    return dataclasses.replace(spec, account=account)
