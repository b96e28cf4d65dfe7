"""``scopefx watch --on-oof`` never lets a file name run code (issue 14, smaller items)."""

from __future__ import annotations

import io
from types import SimpleNamespace

import pytest

from scopefx.cli.watch import _Alarm


@pytest.mark.parametrize(
    "template",
    [
        'echo "{}" >> {log}',
        "echo {} >> {log}",
        "echo >> {log}",
        # inside a command substitution quoting starts afresh, even within "...": the path was
        # put there unquoted and split into words at its spaces
        "echo \"$(printf '%s' {})\" >> {log}",
        "echo \"`printf '%s' {}`\" >> {log}",
        "echo \"$(printf '%s' \"$(printf '%s' {})\")\" >> {log}",
    ],
)
def test_a_file_name_is_never_run_by_the_shell(tmp_path, template):
    """({} inside '...' is refused: see test_watch's test_on_oof_refuses_a_path_inside_single_
    quotes; that text may be another shell's, which would parse the name.)"""
    pwned = tmp_path / "PWNED"
    name = f"/acq/sec $(touch {pwned}) `touch {pwned}` ' \" ;touch {pwned}.tif"
    log = tmp_path / "log.txt"
    alarm = _Alarm(template.replace("{log}", str(log)), io.StringIO())
    alarm.fire(SimpleNamespace(path=name, verdict="out of focus", features=3))
    for _, proc in alarm.running:
        assert proc.wait(timeout=60) == 0
    assert not pwned.exists() and not pwned.with_name("PWNED.tif").exists()
    if "{}" in template:
        assert log.read_text().strip() == name
