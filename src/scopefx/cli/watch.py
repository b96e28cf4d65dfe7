"""``scopefx watch``: follow an acquisition folder, score each image as it lands, flag at once."""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import shlex
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

from ._common import (
    BOLD_RED,
    RESET,
    YELLOW,
    DataError,
    Outputs,
    UsageError,
    add_baseline_options,
    add_endpoint_options,
    add_focus_options,
    colour,
    doubt_line,
    focus_params,
    make_client,
    positive_int,
    printable,
    run_from_args,
    runs_remotely,
    save_plot,
    seconds,
    summary,
)

__all__ = ["add_parser", "cmd_watch"]


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "watch",
        help="follow an acquisition folder and flag out-of-focus sections as they land",
        description="Follow DIR and its subfolders; score each new image once it is complete "
        "(size stable and readable), locally or on --endpoint; print a live table, append to "
        "--csv, flag out-of-focus sections at once (highlight, bell, --on-oof), and write a "
        "summary plot on exit (Ctrl-C). Restart-safe: files already in the CSV are skipped unless "
        "they changed since (a stack's new pages, or a section acquired again, are scored). The "
        "files this command writes (--csv, the summary plot) may lie in DIR: they are never "
        "scored, but one that names an image already in DIR that scopefx did not write is "
        "refused.",
    )
    p.add_argument("folder", metavar="DIR", help="the acquisition folder")
    p.add_argument("--csv", metavar="OUT", help="append one row per image (and resume from it)")
    p.add_argument(
        "--on-oof",
        metavar="CMD",
        help="run CMD for each flagged section, in the background: the path replaces {} or is "
        "appended unless CMD names $SCOPEFX_PATH ({} inside '...' is refused: a shell it "
        "reaches, sh -c or ssh, would parse the name); $SCOPEFX_PATH, $SCOPEFX_PATH_Q "
        "(quoted for another shell), $SCOPEFX_VERDICT, $SCOPEFX_FEATURES are set. CMD starts "
        "before "
        "the section's CSV row is written: a watch killed in between runs it again on restart "
        "(an alarm may repeat, never goes missing)",
    )
    p.add_argument(
        "--plot",
        metavar="OUT.png",
        help="summary plot written on exit (default: the CSV's name with .png, else none)",
    )
    p.add_argument(
        "--new-only",
        action="store_true",
        help="skip images already in DIR when it starts (one still being written is scored)",
    )
    p.add_argument("--interval", type=float, default=0.2, metavar="S", help="scan every S seconds")
    p.add_argument(
        "--settle", type=float, default=0.25, metavar="S", help="unchanged this long = complete"
    )
    p.add_argument(
        "--grace",
        type=float,
        default=10.0,
        metavar="S",
        help="retry an unreadable file for S seconds after its last change (default: 10)",
    )
    p.add_argument(
        "--idle-exit", type=seconds, metavar="S", help="stop after S seconds with no new image"
    )
    p.add_argument(
        "--max-files",
        type=positive_int,
        metavar="N",
        help="stop after N files, at least 1 (a stack counts once)",
    )
    p.add_argument(
        "--remote-dir",
        metavar="PATH",
        help="DIR's path on the endpoint's filesystem, if it differs (with --endpoint)",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="only flagged and failed sections")
    add_baseline_options(p)
    add_focus_options(p)
    add_endpoint_options(
        p, batch_help="new files scored per task, at least 1 (default: 8, here or on the endpoint)"
    )
    p.set_defaults(func=cmd_watch)


def on_oof_command(command: str) -> str:
    """``--on-oof``'s shell command with ``{}`` standing for the path: the path itself never
    enters the command line (a file name such as ``$(rm -rf ~).tif`` is never parsed by the
    shell); ``{}`` becomes a reference to ``$SCOPEFX_PATH``, quoted for where it stands:
    outside quotes, inside ``"..."``, or inside a command substitution (``$(...)`` or
    backticks, where quoting starts afresh even within ``"..."``: ``"$(basename {})"`` gets
    the path as one word, spaces and all). Without ``{}`` the path is appended, unless the
    command names ``$SCOPEFX_PATH`` (or ``$SCOPEFX_PATH_Q``) itself: appended to ``ssh host
    'notify '"$SCOPEFX_PATH_Q"``, the path would reach the remote shell unquoted.

    ``{}`` inside ``'...'`` is refused: that text is either for this shell, where ``{}`` needs
    no quotes of its own, or for another shell (``sh -c '...'``, ``ssh host '...'``), which
    would parse the name that this one pasted in (``'"$SCOPEFX_PATH"'``: a file named
    ``s5$(touch x).tif`` ran ``touch``). There the command names ``"$SCOPEFX_PATH"`` itself
    (``sh -c`` inherits it) or ``$SCOPEFX_PATH_Q``, the path quoted for a shell elsewhere.

    Raises
    ------
    UsageError
        ``{}`` inside ``'...'``.
    """
    if "{}" not in command:  # the path appended, unless the command names it itself
        return command if "SCOPEFX_PATH" in command else f'{command} "$SCOPEFX_PATH"'
    out, i = [], 0
    stack = [""]
    while i < len(command):
        top = stack[-1]
        if command.startswith("{}", i):
            if top == "'":
                raise UsageError(
                    f"--on-oof {command!r}: {{}} inside '...' is refused: for this shell it "
                    "needs no quotes (write echo {} for echo '{}'); for another shell (sh -c "
                    "'...', ssh host '...') the file name would be parsed as code: write "
                    '"$SCOPEFX_PATH" there (sh -c inherits it), or $SCOPEFX_PATH_Q, the path '
                    "quoted for a shell elsewhere (ssh host 'notify '\"$SCOPEFX_PATH_Q\")"
                )
            out.append("$SCOPEFX_PATH" if top == '"' else '"$SCOPEFX_PATH"')
            i += 2
            continue
        step = _step(command, i, stack)
        out.append(command[i : i + step])
        i += step
    return "".join(out)


def _step(command: str, i: int, stack: list[str]) -> int:
    """Move the quoting ``stack`` over the character(s) at ``i``; how many were read.
    Contexts, innermost last: ``""`` unquoted, ``'"'``, ``"'"``, ``"$("`` (or ``"("``) a
    command substitution or subshell, ``"`"`` backticks; the last three quote like the
    command line itself."""
    ch, top = command[i], stack[-1]
    if top == "'":
        if ch == "'":
            stack.pop()
    elif ch == "\\" and i + 1 < len(command):
        return 2
    elif command.startswith("$(", i):
        stack.append("$(")
        return 2
    elif ch == "`":
        if top == "`":
            stack.pop()
        else:
            stack.append("`")
    elif top == '"':
        if ch == '"':
            stack.pop()
    elif ch in "'\"":
        stack.append(ch)
    elif ch == "(":
        stack.append("(")
    elif ch == ")" and top in ("$(", "("):
        stack.pop()
    return 1


class _Alarm:
    """Runs ``--on-oof`` for each flagged section without holding up the watch."""

    def __init__(self, command: str | None, out: TextIO) -> None:
        # translated once, at the start: a command that cannot be quoted is refused now
        self.command, self.out = (on_oof_command(command) if command else None), out
        self.running: list[tuple[str, subprocess.Popen[bytes]]] = []

    def fire(self, record: Any) -> None:
        if not self.command:
            return
        cmd = self.command
        env = dict(
            os.environ,
            SCOPEFX_PATH=record.path,
            SCOPEFX_PATH_Q=shlex.quote(record.path),  # for a shell inside the command
            SCOPEFX_VERDICT=record.verdict,
            SCOPEFX_FEATURES=str(record.features),
        )
        try:
            # its own process group: a command that outlives the watch is stopped with its
            # children (killing the shell alone left a `sleep` or a mail client running)
            proc = subprocess.Popen(
                cmd, shell=True, env=env, stdin=subprocess.DEVNULL, start_new_session=True
            )
        except OSError as exc:
            print(printable(f"--on-oof failed to start for {record.path}: {exc}"), file=self.out)
            return
        self.running.append((record.path, proc))

    def reap(self, *, wait: float = 0.0) -> None:
        deadline = time.monotonic() + wait
        for path, proc in list(self.running):
            try:
                code = proc.wait(timeout=max(0.0, deadline - time.monotonic()) if wait else 0)
            except subprocess.TimeoutExpired:
                if not wait:
                    continue
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
                code = proc.wait()
                print(f"--on-oof for {printable(path)}: still running after {wait:g} s, killed",
                      file=self.out)  # fmt: skip
            self.running.remove((path, proc))
            if code:
                print(f"--on-oof for {printable(path)} exited with status {code}", file=self.out)


@contextlib.contextmanager
def _stop_on_signals() -> Iterator[threading.Event]:
    """An event set by SIGTERM and the first Ctrl-C (a second Ctrl-C interrupts at once)."""
    stop = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def handler(signum: int, frame: Any) -> None:
        if stop.is_set() and signum == signal.SIGINT:
            raise KeyboardInterrupt
        stop.set()

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def _row(scored: Any, in_colour: bool) -> str:
    r = scored.record
    clock = time.strftime("%H:%M:%S")
    name = printable(scored.section) + ("" if r.page is None else f"[{r.page}]")
    latency = (
        "settled"  # a warm-up section judged again once the baseline exists
        if scored.late
        else ("backlog" if math.isnan(scored.latency) else f"{scored.latency:.2f}s")
    )
    if not r.ok:
        text = f"{clock}  {'-':>9}  {r.status:<13} {latency:>7}  {name}: {printable(r.error)}"
        return f"{YELLOW}{text}{RESET}" if in_colour else text
    text = f"{clock}  {r.features:>9d}  {r.verdict:<13} {latency:>7}  {name}"
    if scored.flagged:
        return (
            f"{BOLD_RED}{text}  <- re-acquire{RESET}\a" if in_colour else f"{text}  <- re-acquire"
        )
    return text


def cmd_watch(args: argparse.Namespace, out: TextIO) -> int:
    if not Path(args.folder).is_dir():
        raise UsageError(f"{args.folder!r} is not a directory")
    params = focus_params(args)
    plot = args.plot or (str(Path(args.csv).with_suffix(".png")) if args.csv else None)
    outputs = Outputs(
        [
            ("--csv", args.csv, "csv"),
            ("--plot" if args.plot else "the summary plot (--csv's name with .png)", plot, "plot"),
        ],
        inputs=[("--calibration", args.calibration), ("--config", args.config)],
    )
    own = outputs.inside(args.folder)  # in the watched folder: never a section
    params, run = run_from_args(args, params)
    remote = runs_remotely(args, "focus")
    if args.remote_dir and not remote:
        raise UsageError("--remote-dir only applies with --endpoint (or a focus endpoint)")
    outputs.make_folders()
    client = make_client(args, quiet=True) if remote else None
    lines_in_colour = colour(out)
    alarm = _Alarm(args.on_oof, out)
    where = f"endpoint {args.endpoint}" if remote and args.endpoint else "locally"
    if remote and not args.endpoint:
        where = "on the configured focus endpoint"
    from ..watch import FolderWatch

    watch = FolderWatch(
        args.folder,
        exclude=own,  # its CSV and summary plot, where they lie in the folder: no sections
        client=client,
        params=params,
        run=run,
        csv=args.csv,
        remote_dir=args.remote_dir,
        interval=args.interval,
        settle=args.settle,
        grace=args.grace,
        batch_size=args.batch_size or 8,
        include_existing=not args.new_only,
        on_flagged=alarm.fire,  # before the CSV row: a kill never loses an alarm
    )
    try:
        done = len({r.path for r in watch.previous})
        print(
            printable(
                f"watching {watch.folder} (scoring {where}"
                + (f"; {done} file(s) already in {args.csv}" if done else "")
                + "); Ctrl-C to stop"
            ),
            file=out,
        )
        print(f"{'time':<8}  {'features':>9}  {'verdict':<13} {'latency':>7}  section", file=out)
        told: set[str] = set()  # doubts already said: each once, when it first appears
        with _stop_on_signals() as stop:
            for scored in watch.follow(
                idle_exit=args.idle_exit, max_files=args.max_files, stop=stop
            ):
                if not args.quiet or scored.flagged or not scored.record.ok:
                    print(_row(scored, lines_in_colour), file=out, flush=True)
                for doubt in watch.run.doubts():
                    if doubt not in told:  # now, not hours later in the summary
                        told.add(doubt)
                        print(f"note: {doubt_line(doubt)}", file=out, flush=True)
                alarm.reap()
    finally:
        watch.close()
        if client is not None:
            client.close()
        alarm.reap(wait=10.0)
    _report(watch, plot, out)
    if watch.records and not any(r.ok for r in watch.records):
        raise DataError(
            f"none of the {len(watch.records)} image(s) this session found could be scored; "
            "see the lines above"
        )
    return 0


def _report(watch: Any, plot: str | None, out: TextIO) -> None:
    """This session's summary, its latencies, and the plot of the whole run."""
    import numpy as np

    summary(watch.records, out, watch.run)  # this session's records; the plot covers every session
    if watch.latencies:
        lat = np.asarray(watch.latencies)
        print(
            f"latency from file written to verdict: median {np.median(lat):.2f} s, "
            f"95th percentile {np.percentile(lat, 95):.2f} s, max {lat.max():.2f} s "
            f"({lat.size} live file(s))",
            file=out,
        )
    everything = watch.all_records()
    if plot and everything:
        from ..focus.plot import plot_focus_series

        fig = plot_focus_series(everything, title=f"{watch.folder.name}: features per section")
        save_plot(fig, plot)
        print(
            f"wrote {printable(plot)} ({len(everything)} section(s), flagged ones labelled)",
            file=out,
        )
