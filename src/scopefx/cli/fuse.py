"""``scopefx fuse``: tiles with positions to an OME-Zarr mosaic (a thin layer over the API)."""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import sys
import threading
from pathlib import Path
from typing import Any, TextIO

from ..errors import ScopefxError
from ._common import (
    Outputs,
    UsageError,
    add_endpoint_options,
    describe_mosaic,
    in_option_words,
    make_client,
    positive_float,
    positive_int,
    printable,
    runs_remotely,
)

__all__ = ["add_grid_parser", "add_parser", "cmd_fuse", "cmd_grid"]


def add_parser(sub: Any) -> None:
    from ..fusion import BANDING_MODES, BLENDS, FusionParams, RegistrationParams

    d = FusionParams()
    p = sub.add_parser(
        "fuse",
        help="fuse tiles into an OME-Zarr mosaic (out of core, resumable)",
        description="Fuse tiles placed by their stage positions (or affines) into an OME-Zarr "
        "mosaic, chunk by chunk. TILES is a CSV (path,x,y[,z] in pixels, x_um,y_um with "
        "--pixel-size or the tiles' own, optional affine and focus columns), a Fiji "
        "TileConfiguration.txt, or an instrument file with stage positions (.ome.tif, .czi, "
        ".nd2, .lif).",
    )
    p.add_argument(
        "tiles",
        metavar="TILES",
        help="tile table (.csv/.tsv, TileConfiguration .txt, or an instrument file)",
    )
    p.add_argument(
        "-o", "--output", required=True, metavar="OUT.ome.zarr", help="the OME-Zarr mosaic to write"
    )
    p.add_argument("--blend", choices=BLENDS, default=d.blend, help="default: %(default)s")
    p.add_argument(
        "--chunk", type=int, default=None, metavar="N", help="chunk side (default: 1024 2D, 256 3D)"
    )
    p.add_argument(
        "--order", type=int, choices=(0, 1, 3), default=d.order, help="default: %(default)s"
    )
    p.add_argument("--feather", type=float, default=None, metavar="PX", help="ramp width")
    p.add_argument("--fill", type=float, default=d.fill, help="value where no tile covers")
    p.add_argument("--resume", action="store_true", help="finish an interrupted run")
    p.add_argument("--overwrite", action="store_true", help="replace what is at OUT")
    p.add_argument("--register", action="store_true", help="refine positions from overlaps")
    r = RegistrationParams()
    g = p.add_argument_group("registration (with --register or --qc; see RegistrationParams)")
    g.add_argument(
        "--max-shift",
        type=float,
        default=r.max_shift_px,
        metavar="PX",
        help="largest correction searched per pair and axis (default: 15%% of the tile)",
    )
    g.add_argument(
        "--min-overlap",
        type=float,
        default=r.min_overlap_px,
        metavar="PX",
        help="narrowest common part (px) a pair's shift may leave; capped at the stage overlap "
        "(default: %(default)s)",
    )
    g.add_argument(
        "--no-registration-flatfield",
        action="store_true",
        help="without --flatfield, correlate the tiles as read (default: through a flat field "
        "estimated from the tiles, for registration only)",
    )
    g.add_argument(
        "--registration-banding",
        choices=BANDING_MODES,
        default=r.remove_banding,
        help="take out the row and column banding the tiles share (a camera's fixed pattern) "
        "before correlation, for registration only: on, off, or auto (default: where it looks "
        "like banding: nearly all of it shared, changing from line to line)",
    )
    g.add_argument(
        "--allow-partial-registration",
        action="store_true",
        help="register what can be registered when fewer than half the neighbouring tiles "
        "give a usable match (default: refuse, saying why, exit 3, with the QC report of "
        "the pairs as measured written beside OUT)",
    )
    g.add_argument(
        "--qc",
        action="store_true",
        help="register and write the stitching QC report (OUT's name less its extension + "
        ".qc.json, .qc.png) and the refined table and pairs (.registered.csv, .pairs.csv) "
        "without fusing; OUT must not exist",
    )
    p.add_argument(
        "--flatfield",
        metavar="FLAT[,DARK]|estimate",
        help="vignetting correction from images (or .npz), or estimated from the tiles",
    )
    p.add_argument("--preview", metavar="PREVIEW.png",
                   help="downsampled PNG with tile outlines (named .png)")  # fmt: skip
    p.add_argument("--pixel-size", type=positive_float, metavar="UM",
                   help="pixel size in micrometres")  # fmt: skip
    p.add_argument(
        "--pixel-size-z",
        type=positive_float,
        metavar="UM",
        help="z step of z-stack tiles in micrometres (default: what the files record)",
    )
    p.add_argument(
        "--z-plane",
        type=_z_plane,
        default=None,
        metavar="N|best|max",
        help="a 2D mosaic from the z-stack tiles of an instrument file: plane N (from 0) of "
        "every tile, each tile's sharpest plane (best: highest MHFD focus score), or each "
        "tile's maximum-intensity projection (max); default: the 3D mosaic of the stacks",
    )
    p.add_argument(
        "--scene", default=None, metavar="S",
        help="the mosaic to read from an instrument file that holds several (a CZI's scenes, "
        "a LIF project's tile scans): its index from 0 or its name; default: the first, with "
        "a warning that names the others",
    )  # fmt: skip
    p.add_argument(
        "--rotation", type=float, default=0.0, metavar="DEG",
        help="camera rotation relative to the stage, in degrees",
    )  # fmt: skip
    p.add_argument(
        "--flip-x", action="store_true",
        help="the stage's x runs against the image's columns (grows to the left): negate x",
    )  # fmt: skip
    p.add_argument(
        "--flip-y", action="store_true",
        help="the stage's y runs against the image's rows (grows upwards): negate y",
    )  # fmt: skip
    p.add_argument("--skip-missing", action="store_true", help="fill missing tiles' area")
    p.add_argument("--force", action="store_true", help="allow outputs over the size limit")
    p.add_argument("--ngff", choices=("0.4", "0.5"), default="0.4", help="default: %(default)s")
    p.add_argument("--no-pyramid", action="store_true", help="write level 0 only")
    p.add_argument(
        "--workers",
        type=positive_int,
        default=None,
        help="threads (default: 4 to read and register the tiles, all cores to write chunks)",
    )
    p.add_argument("--json", metavar="OUT.json", help="write the result summary")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.add_argument(
        "--cluster",
        metavar="CLUSTER.yaml",
        help="run the chunks on a dask cluster: local, SLURM or PBS (see scopefx.cluster)",
    )
    add_endpoint_options(p)
    p.add_argument(
        "--regions",
        type=positive_int,
        default=None,
        metavar="N",
        help="on an endpoint: fan out over N fuse_region tasks (default: one fuse_mosaic task)",
    )
    p.set_defaults(func=cmd_fuse)


def add_grid_parser(sub: Any) -> None:
    from ..io import GRID_ORDERS, GRID_STARTS

    p = sub.add_parser(
        "grid",
        help="write the tile table of a folder of tiles named by their place in a grid",
        description="Place tiles named by their row and column (img_r{row}_c{col}.tif, MIST's "
        "img_r{rrr}_c{ccc}.tif) or by their number in acquisition order (tile_{index}.tif, "
        "Fiji's tile_{iii}.tif, with --grid) on their nominal grid, from the overlap of "
        "neighbouring tiles, and write the tile table for `scopefx fuse` (path,x,y in "
        "pixels). Numbering may start at 0 or 1; missing tiles leave their place empty. "
        "The positions are nominal: fuse with --register to find the true layout.",
    )
    p.add_argument(
        "pattern",
        metavar="PATTERN",
        help="the tiles' path with {row} and {col}, or {index}, in the file name",
    )
    p.add_argument(
        "--overlap", required=True, type=_overlap_pct, metavar="PCT[,PCT]",
        help="nominal overlap of neighbouring tiles, percent of a tile (x,y: one per axis)",
    )  # fmt: skip
    p.add_argument(
        "-o", "--output", required=True, metavar="TILES.csv", help="the tile table to write"
    )
    p.add_argument(
        "--grid", type=_grid_shape, default=None, metavar="ROWSxCOLS",
        help="the grid's shape, rows first (Fiji's and MIST's grid width is COLS): needed for "
        "numbered tiles ({index})",
    )  # fmt: skip
    p.add_argument(
        "--order", choices=GRID_ORDERS, default=None,
        help="numbered tiles: how the stage ran (default: rows, each row left to right; "
        "snake-: turning at each end)",
    )  # fmt: skip
    p.add_argument(
        "--start", choices=GRID_STARTS, default=None,
        help="numbered tiles: the corner of the first tile (default: top-left)",
    )  # fmt: skip
    p.add_argument(
        "--first-index", type=int, default=None, metavar="N",
        help="numbered tiles: the first tile's number (default: the smallest found)",
    )  # fmt: skip
    p.add_argument("--overwrite", action="store_true", help="replace TILES.csv if it exists")
    p.set_defaults(func=cmd_grid)


def _overlap_pct(text: str) -> tuple[float, ...]:
    """``--overlap``: one number, or ``x,y`` (their range is grid_tile_table's to check)."""
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a percentage or two as x,y (e.g. 10 or 10,15), got {text!r}"
        ) from None


def _grid_shape(text: str) -> tuple[int, int]:
    """``--grid``: ``ROWSxCOLS``."""
    import re

    m = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", text)
    if m is None or int(m[1]) < 1 or int(m[2]) < 1:
        raise argparse.ArgumentTypeError(f"expected ROWSxCOLS, e.g. 5x4, got {text!r}")
    return int(m[1]), int(m[2])


def cmd_grid(args: argparse.Namespace, out: TextIO) -> int:
    from ..io import grid_tile_table

    target = Path(args.output)
    if target.suffix.lower() not in (".csv", ".tsv"):  # fuse reads a table by its name
        raise UsageError(
            f"-o {args.output!r}: the grid's tile table is written as CSV; name it .csv (or "
            ".tsv, tab-separated)"
        )
    if os.path.lexists(target) and not args.overwrite:
        raise UsageError(
            f"{args.output!r} exists; give --overwrite to replace it, or choose another path"
        )
    if target.is_dir():
        raise UsageError(f"{args.output!r} is a folder; give the tile table's file name")
    table = grid_tile_table(
        args.pattern, args.overlap, grid=args.grid, order=args.order, start=args.start,
        first_index=args.first_index,
    )  # fmt: skip
    if os.path.exists(target):
        for ref in table.refs:
            if os.path.samefile(ref, target):
                raise UsageError(f"-o {args.output!r} is one of the tiles ({ref})")
    _write_whole(target, lambda temp: table.to_csv(temp, tabs=target.suffix.lower() == ".tsv",
                                                   affine=False))  # fmt: skip
    pos = table.affines[:, : table.ndim, table.ndim]  # index order: (z,) y, x
    rows, cols = args.grid or (len(set(pos[:, k].tolist())) for k in (-2, -1))
    stacks = " (z-stacks)" if table.ndim == 3 else ""
    empty = rows * cols - len(table)
    gaps = f", {empty} of its places empty (no file matched)" if empty > 0 else ""
    print(f"{printable(args.output)}: {len(table)} tiles{stacks} on a {rows} x {cols} grid "
          f"(rows x columns){gaps}, nominal positions; next: scopefx fuse "
          f"{printable(args.output)} --register -o MOSAIC.ome.zarr", file=out)  # fmt: skip
    return 0


def _z_plane(text: str) -> int | str:
    """``--z-plane``: a plane index or a word (FuseOptions checks which words it takes)."""
    return int(text) if text.strip().isdigit() else text.strip()


def _params(args: argparse.Namespace) -> Any:
    """The :class:`scopefx.FusionParams` the options describe."""
    from ..fusion import FusionParams

    with in_option_words(FusionParams):  # a bad value names the option typed
        return FusionParams(
            blend=args.blend, order=args.order, chunk_px=args.chunk, feather_px=args.feather,
            fill=args.fill,
        )  # fmt: skip


def _options(args: argparse.Namespace) -> Any:
    """The :class:`scopefx.fusion.FuseOptions` the options describe: the one object that
    travels to :func:`scopefx.fuse` or, as JSON, to the endpoint."""
    from ..fusion import FuseOptions, RegistrationParams

    with in_option_words(FuseOptions, RegistrationParams):  # names the option typed
        registration = RegistrationParams(
            max_shift_px=args.max_shift, min_overlap_px=args.min_overlap,
            allow_partial=args.allow_partial_registration,
            estimate_flatfield=not args.no_registration_flatfield,
            remove_banding=args.registration_banding,
        )  # fmt: skip
        return FuseOptions(
            pixel_size_um=args.pixel_size, pixel_size_z_um=args.pixel_size_z,
            rotation_deg=args.rotation,
            flip_x=args.flip_x, flip_y=args.flip_y, skip_missing=args.skip_missing,
            force=args.force, register=args.register or args.qc,
            registration=registration, flatfield=args.flatfield, ngff=args.ngff,
            pyramid=not args.no_pyramid, resume=args.resume, overwrite=args.overwrite,
            preview=args.preview, z_plane=args.z_plane, scene=args.scene,
        )  # fmt: skip


def _report_extra(extra: dict[str, Any], out: TextIO) -> None:
    """What the run found out about its inputs: the pixel size's source, layout problems, the
    registration's one-line QC summary and where the report is."""
    source = extra.get("pixel_size_from")
    about = source or "unknown (no physical scale written; --pixel-size)"
    print(f"pixel size: {printable(about)}", file=out)
    if extra.get("pixel_size_z_um"):
        print(f"z step: {extra['pixel_size_z_um']:g} um", file=out)
    if "z_planes" in extra:  # what each tile contributed to a 2D mosaic of z-stacks
        counts = collections.Counter(str(k) for k in extra["z_planes"])
        listed = ", ".join(f"{k} ({n} tiles)" for k, n in sorted(counts.items()))
        print(f"z planes: {listed}", file=out)
    if extra.get("colour"):
        print(f"tiles: {extra['colour']}", file=out)
    if extra.get("flatfield"):
        print(f"flat field: {printable(extra['flatfield'])}", file=out)
    for problem in extra.get("layout_problems", []):  # they name tiles
        print(f"layout: {printable(problem)}", file=out)
    r = extra.get("registration", extra if "summary_line" in extra else None)
    if r is not None:
        print(printable(r.get("summary_line") or f"registration: {r['pairs_used']} of "
              f"{r['pairs']} pairs used, rms residual {r['rms_residual_px']:.3f} px"),
              file=out)  # fmt: skip
        print(printable(f"stitching QC: {r['qc']} ({r['qc_png']}); refined table {r['table']}"),
              file=out)  # fmt: skip


def _report(result: Any, where: str, out: TextIO) -> None:
    print(f"{printable(where)}: {describe_mosaic(result.to_dict())}", file=out)
    if result.missing:
        print(f"skipped {len(result.missing)} missing tiles (area filled):", file=out)
        for ref in result.missing:
            print(f"  {printable(ref)}", file=out)
    _report_extra(result.extra, out)


def _cmd_fuse_remote(args: argparse.Namespace, params: Any, options: Any, out: TextIO) -> int:
    from ..errors import ConfigError

    if args.cluster:
        raise ConfigError(
            "--cluster is for local runs; on an endpoint the cluster comes from its "
            "configuration (SCOPEFX_CLUSTER in worker_init)"
        )
    with make_client(args, quiet=args.quiet) as client:
        result = client.fuse(
            args.tiles, args.output, params=params, options=options, regions=args.regions,
            workers=args.workers,
        )  # fmt: skip
    _report(result, f"{result.extra.get('output', args.output)} (on the endpoint)", out)
    if args.json:
        _write_json(args, result.to_dict())
    return 0


def _cmd_qc(args: argparse.Namespace, options: Any, out: TextIO) -> int:
    from ..fusion import qc

    if runs_remotely(args, "fusion"):
        raise UsageError("--qc runs here, on tiles this machine can read; drop --endpoint")
    if args.preview:
        raise UsageError("--preview pictures the fused mosaic, and --qc does not fuse (the "
                         "report's picture is its .qc.png); drop --preview")  # fmt: skip
    summary = qc(args.tiles, args.output, options=options, workers=args.workers)
    _report_extra(summary, out)
    if args.json:
        _write_json(args, summary)
    return 0


def cmd_fuse(args: argparse.Namespace, out: TextIO) -> int:
    from tqdm import tqdm

    from ..fusion import fuse, unfinished

    params, options = _params(args), _options(args)  # usage errors before any data is read
    _check_side_outputs(args)
    if args.qc:
        return _cmd_qc(args, options, out)
    if runs_remotely(args, "fusion"):
        return _cmd_fuse_remote(args, params, options, out)
    bar = tqdm(
        unit="chunk", disable=args.quiet or None, file=sys.stderr, desc="fusing", leave=False
    )
    lock = threading.Lock()

    def on_chunk(status: int, total: int) -> None:
        with lock:
            if bar.total != total:
                bar.total = total
                bar.refresh()
            bar.update(1)

    stack = contextlib.ExitStack()
    scheduler = None
    if args.cluster:  # dask workers elsewhere: their chunks cannot tick this bar
        from ..cluster import open_cluster

        scheduler = stack.enter_context(open_cluster(args.cluster))
        bar.disable = True
    # a store this run makes (or resumes) and leaves unfinished: the error says what then
    ours = args.resume or args.overwrite or not os.path.lexists(args.output)
    try:
        result = fuse(
            args.tiles, args.output, params=params, options=options, workers=args.workers,
            on_chunk=None if scheduler is not None else on_chunk, scheduler=scheduler,
        )  # fmt: skip
    except (ScopefxError, OSError) as exc:  # an unreadable tile, a full disk, ...
        if ours and not args.endpoint and unfinished(args.output):
            exc.add_note(
                f"{args.output} is left unfinished, its chunks written so far kept; once the "
                "cause is fixed, --resume finishes it (the same tiles and options), "
                "--overwrite starts over"
            )
        raise
    finally:
        stack.close()
        bar.close()
    _report(result, result.path, out)
    if args.preview:
        print(f"preview: {printable(args.preview)}", file=out)
    if args.json:
        _write_json(args, result.to_dict())
    return 0


def _check_side_outputs(args: argparse.Namespace) -> None:
    """``--json`` and ``--preview``, before any tile is read: neither the tile table, nor the
    mosaic or a path inside it, nor one file for both; an existing one only with
    ``--overwrite`` or ``--resume`` (a previous run's), and an existing ``--json`` only where
    it holds JSON (never a table, a tile or a mosaic). The preview is written last, after
    hours of fusing: said now (what it holds, :func:`scopefx.fusion.prepare` checks)."""
    from ._common import _written_by_scopefx

    here = not runs_remotely(args, "fusion")  # a remote OUT names the endpoint's file system
    # so do a remote run's TILES and --preview: the endpoint checks them (only --json is here)
    preview = args.preview if here else None
    outputs = Outputs([("--json", args.json, "json"), ("--preview", preview, "file")],
                      inputs=[("TILES", args.tiles if here else None)])  # fmt: skip
    mosaic = os.path.realpath(args.output) if here else None
    sides = set()
    if here and (args.register or args.qc):
        from ..fusion import sidecar

        sides = {os.path.realpath(sidecar(args.output, suffix)) for suffix in
                 (".qc.json", ".qc.png", ".registered.csv", ".pairs.csv")}  # fmt: skip
    for option, path in (("--json", args.json), ("--preview", preview)):
        if path is None:
            continue
        real = os.path.realpath(path)
        if mosaic is not None and (real == mosaic or real.startswith(mosaic + os.sep)):
            raise UsageError(
                f"{option} {path!r} is the mosaic's path or inside it ({args.output!r}); "
                "write it beside the mosaic"
            )
        if here and real in sides:
            raise UsageError(
                f"{option} {path!r} is a side file the registration writes beside the mosaic "
                "(its QC report, pairs or registered table); choose another path"
            )
        if not os.path.lexists(path):
            continue
        if option == "--json" and _stream(path):
            continue  # /dev/stdout, a pipe: written as it is, never replaced
        if option == "--json" and _empty_file(path):
            continue  # made for it (mktemp): nothing to lose
        if not (args.overwrite or args.resume):
            raise UsageError(
                f"{option} {path!r} exists; scopefx writes its side files only where nothing "
                "is (--overwrite or --resume replaces a previous run's), or choose another path"
            )
        if option == "--json" and (os.path.islink(path) or not os.path.isfile(path)
                                   or not _written_by_scopefx(path, "json")):  # fmt: skip
            raise UsageError(
                f"--json {path!r} exists and is not a JSON summary: scopefx will not replace "
                "it; choose another path"
            )
    outputs.make_folders()


def _stream(path: str | os.PathLike[str]) -> bool:
    """A character device or a pipe (``>(jq .)``), links followed, or a path named in
    ``/dev`` or ``/proc`` (``/dev/stdout``, whatever the shell redirected it to)."""
    import stat

    if os.path.abspath(path).startswith(("/dev/", "/proc/")):
        return True
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False
    return stat.S_ISCHR(mode) or stat.S_ISFIFO(mode)


def _empty_file(path: str | os.PathLike[str]) -> bool:
    """An empty regular file, not a link (``mktemp --suffix .json`` made it for this)."""
    return not os.path.islink(path) and os.path.isfile(path) and os.path.getsize(path) == 0


def _write_json(args: argparse.Namespace, summary: dict[str, Any]) -> None:
    """``--json``, written whole to a fresh name beside it, then renamed into place (a
    rename replaces a link there, never the file it points to)."""
    target, text = Path(args.json), _json(summary)
    if _stream(target):  # /dev/stdout, a pipe (jq): no rename onto a device
        with open(target, "w") as fh:
            fh.write(text)
        return
    _write_whole(target, lambda temp: temp.write_text(text))


def _write_whole(target: Path, write: Any) -> None:
    """``write(temp)`` to a fresh name beside ``target``, then renamed into place: whole or
    not at all (a rename replaces a link there, never the file it points to)."""
    import secrets

    temp = target.parent / f".{target.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        # created here, with the umask's mode (mkstemp's would be 0600: unreadable to the
        # cluster jobs and colleagues that read it)
        os.close(os.open(temp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
    except OSError as exc:
        raise UsageError(f"cannot write {str(target)!r}: {exc.strerror or exc}") from None
    try:
        write(temp)
        os.replace(temp, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)


def _json(summary: dict[str, Any]) -> str:
    """``--json``: strict JSON (a figure not measured, NaN, is ``null``)."""
    from .._checks import json_safe

    return json.dumps(json_safe(summary, null=True), indent=1, allow_nan=False)
