"""The confined opener and output roots, unit by unit (the attacks are in tests/security)."""

from __future__ import annotations

import os

import pytest

from scopefx.errors import AccessDeniedError, UnsupportedFormatError
from scopefx.io import DataRoots
from scopefx.io._confine import created, open_read, read_bytes, write_file


def test_regular_files_only_and_never_blocking(tmp_path):
    (tmp_path / "a.bin").write_bytes(b"abc")
    assert read_bytes(tmp_path / "a.bin", limit=10) == b"abc"
    os.mkfifo(tmp_path / "pipe")
    with pytest.raises(UnsupportedFormatError, match="FIFO"):
        open_read(tmp_path / "pipe")
    with pytest.raises(UnsupportedFormatError, match="NUL byte"):
        open_read(f"{tmp_path}/a\x00.bin")
    with pytest.raises(ValueError, match="over the limit"):
        read_bytes(tmp_path / "a.bin", limit=2)


def test_reads_confined_to_data_and_output_roots(tmp_path, monkeypatch):
    data, out, outside = tmp_path / "data", tmp_path / "out", tmp_path / "outside"
    for folder in (data, out, outside):
        folder.mkdir()
        (folder / "f").write_bytes(folder.name.encode())
    monkeypatch.setenv("SCOPEFX_DATA_ROOTS", str(data))
    monkeypatch.setenv("SCOPEFX_OUTPUT_ROOTS", str(out))
    assert read_bytes(data / "f", limit=99) == b"data"
    assert read_bytes(out / "f", limit=99) == b"out"
    (data / "inside").symlink_to(out / "f")  # a link that stays inside the roots
    assert read_bytes(data / "inside", limit=99) == b"out"
    (data / "leak").symlink_to(outside / "f")
    with pytest.raises(AccessDeniedError, match="outside the roots"):
        read_bytes(data / "leak", limit=99)


def test_writes_never_follow_a_link(tmp_path):
    store, victim = tmp_path / "store", tmp_path / "victim"
    victim.mkdir()
    write_file(store, "a/b/c", b"1")
    assert (store / "a" / "b" / "c").read_bytes() == b"1"
    (store / "x").symlink_to(victim)
    with pytest.raises(AccessDeniedError, match="never follows links"):
        write_file(store, "x/c", b"2")
    (store / "y").symlink_to(victim / "file")
    write_file(store, "y", b"3")  # the link is replaced, its target never written
    assert not (store / "y").is_symlink() and not (victim / "file").exists()
    with pytest.raises(FileExistsError):
        write_file(store, "y", b"4", exclusive=True)
    with pytest.raises(FileExistsError), created(store / "y") as fh:
        fh.write(b"5")
    assert (store / "y").read_bytes() == b"3" and list(store.glob(".*partial")) == []


@pytest.mark.parametrize(
    ("data", "outputs", "ref", "expected"),
    [
        ("d", "o", "run/m.ome.zarr", "o/run/m.ome.zarr"),
        ("d", "d/out", "{root}/d/out/m.zarr", "d/out/m.zarr"),  # output root inside a data root
        ("d", "d", "m.zarr", "d/m.zarr"),  # both: the output root wins the tie
        ("d/raw", "d", "{root}/d/raw/m.zarr", None),  # data root inside an output root
        ("d", "o", "{root}/d/m.zarr", None),
        ("d", "o", ".", None),  # the output root itself
        ("d", "o", "../d/m.zarr", None),
        ("d", "o", "m.zarr::0", None),
        ("d", None, "m.zarr", None),  # no output roots: nothing is written
    ],
)
def test_resolve_output(tmp_path, data, outputs, ref, expected):
    roots = DataRoots(
        (str(tmp_path / data),), None if outputs is None else (str(tmp_path / outputs),)
    )
    ref = ref.format(root=tmp_path)
    if expected is None:
        with pytest.raises(AccessDeniedError):
            roots.resolve_output(ref)
    else:
        assert roots.resolve_output(ref) == str(tmp_path / expected)


def test_resolve_output_refuses_a_link_leading_out(tmp_path):
    (tmp_path / "o").mkdir()
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "o" / "run").symlink_to(tmp_path / "elsewhere")
    roots = DataRoots((str(tmp_path / "d"),), (str(tmp_path / "o"),))
    with pytest.raises(AccessDeniedError, match="outside the output roots"):
        roots.resolve_output("run/m.ome.zarr")
    (tmp_path / "o" / "m.zarr").symlink_to(tmp_path / "o" / "real")
    with pytest.raises(AccessDeniedError, match="symbolic link"):
        roots.resolve_output("m.zarr")
    assert DataRoots().resolve_output("rel.zarr") == os.path.abspath("rel.zarr")


def test_remove_partials_removes_only_unpublished_writes_and_follows_no_link(tmp_path):
    from scopefx.io.confined import remove_partials

    store, outside = tmp_path / "store", tmp_path / "outside"
    (store / "0" / "1").mkdir(parents=True)
    outside.mkdir()
    hexname = "0123456789abcdef" * 2
    left = store / "0" / "1" / f".3.{hexname}.partial"
    left.write_bytes(b"half")
    kept = {
        store / "0" / "1" / "3": b"chunk",
        store / "0" / "1" / f".3.{hexname[:-1]}.partial": b"not ours: 31 hex digits",
        store / "0" / f"x.{hexname}.partial": b"not ours: no leading dot",
        outside / f".secret.{hexname}.partial": b"outside the store",
    }
    for path, data in kept.items():
        path.write_bytes(data)
    (store / "0" / f".link.{hexname}.partial").symlink_to(outside / f".secret.{hexname}.partial")
    (store / f".dir.{hexname}.partial").mkdir()
    (store / "linked").symlink_to(outside, target_is_directory=True)
    assert remove_partials(store) == 1
    assert not left.exists()
    assert all(path.read_bytes() == data for path, data in kept.items())
    assert (store / "0" / f".link.{hexname}.partial").is_symlink()
    assert (store / f".dir.{hexname}.partial").is_dir()
