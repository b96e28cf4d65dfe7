"""Data-root confinement: what an endpoint lets remote references reach."""

import os

import pytest

from scopefx.errors import (
    AccessDeniedError,
    ConfigError,
    ImageNotFoundError,
    UnsupportedFormatError,
)
from scopefx.io import DATA_ROOTS_ENV, DataRoots


@pytest.fixture
def tree(tmp_path):
    """data/ (the root) with a file and a Zarr-like folder; secret/ outside it."""
    data = tmp_path / "data"
    (data / "run1").mkdir(parents=True)
    (data / "run1" / "s001.tif").write_bytes(b"x")
    (data / "run.zarr" / "raw").mkdir(parents=True)
    secret = tmp_path / "secret"
    secret.mkdir()
    (secret / "key.tif").write_bytes(b"x")
    return tmp_path


def test_unset_means_unrestricted(tree, monkeypatch):
    monkeypatch.delenv(DATA_ROOTS_ENV, raising=False)
    roots = DataRoots.from_env()
    assert not roots.restricted and roots.describe() is None
    secret = str(tree / "secret" / "key.tif")
    assert roots.resolve(secret) == secret
    monkeypatch.chdir(tree)
    assert roots.resolve("secret/key.tif") == secret  # relative to the working folder


def test_from_env_splits_on_pathsep(tree):
    env = {DATA_ROOTS_ENV: f"{tree / 'data'}{os.pathsep} {os.pathsep}{tree / 'secret'}"}
    roots = DataRoots.from_env(env)
    assert roots.describe() == [str(tree / "data"), str(tree / "secret")]
    assert DataRoots.from_env({DATA_ROOTS_ENV: ""}).roots is None


def test_relative_and_absolute_inside(tree):
    roots = DataRoots((str(tree / "data"),))
    inside = str(tree / "data" / "run1" / "s001.tif")
    assert roots.resolve("run1/s001.tif") == inside
    assert roots.resolve(inside) == inside
    assert roots.resolve(f"file://{inside}") == inside
    assert roots.resolve("run.zarr::raw") == f"{tree / 'data' / 'run.zarr'}::raw"


def test_relative_reference_is_looked_up_in_each_root(tree):
    (tree / "other").mkdir()
    (tree / "other" / "only_here.tif").write_bytes(b"x")
    roots = DataRoots((str(tree / "data"), str(tree / "other")))
    assert roots.resolve("only_here.tif") == str(tree / "other" / "only_here.tif")
    # an output that does not exist yet goes to the first root
    assert roots.resolve("new/out.ome.zarr", must_exist=False) == str(
        tree / "data" / "new" / "out.ome.zarr"
    )
    # one in no root says where it was looked up (it said "relative paths start at" the
    # task's working folder, where nothing was)
    with pytest.raises(ImageNotFoundError, match=r"'nowhere.tif' does not exist in the data "
                       r"roots of this endpoint \(.*data.*other.*\)") as info:  # fmt: skip
        roots.resolve("nowhere.tif")
    assert "relative paths start at" not in str(info.value)


@pytest.mark.parametrize(
    "ref",
    ["../secret/key.tif", "run1/../../secret/key.tif", "run1/../run1/s001.tif", "run.zarr::../x"],
)
def test_traversal_is_refused_whatever_it_resolves_to(tree, ref):
    roots = DataRoots((str(tree / "data"),))
    with pytest.raises(AccessDeniedError, match=r"'\.\.' in the (array )?path is not allowed"):
        roots.resolve(ref)


def test_absolute_path_outside_is_refused(tree):
    roots = DataRoots((str(tree / "data"),))
    with pytest.raises(AccessDeniedError, match="outside the data roots"):
        roots.resolve(str(tree / "secret" / "key.tif"))
    with pytest.raises(AccessDeniedError, match="outside the data roots"):
        roots.resolve("/etc/passwd")
    # a sibling whose name starts like the root is not inside it
    (tree / "data2").mkdir()
    with pytest.raises(AccessDeniedError):
        roots.resolve(str(tree / "data2"), must_exist=False)


def test_symlink_that_leads_outside_is_refused(tree):
    data = tree / "data"
    (data / "escape.tif").symlink_to(tree / "secret" / "key.tif")
    (data / "escape_dir").symlink_to(tree / "secret", target_is_directory=True)
    roots = DataRoots((str(data),))
    with pytest.raises(AccessDeniedError, match=r"resolves to .*secret.*symbolic link"):
        roots.resolve("escape.tif")
    with pytest.raises(AccessDeniedError, match="symbolic link"):
        roots.resolve(str(data / "escape_dir" / "key.tif"))
    # an output under a link that leads out is refused before it is created
    with pytest.raises(AccessDeniedError):
        roots.resolve("escape_dir/new.ome.zarr", must_exist=False)


def test_symlink_that_stays_inside_is_fine(tree):
    data = tree / "data"
    (data / "alias.tif").symlink_to(data / "run1" / "s001.tif")
    assert DataRoots((str(data),)).resolve("alias.tif") == str(data / "alias.tif")


def test_root_given_through_a_symlink(tree):
    (tree / "link_to_data").symlink_to(tree / "data", target_is_directory=True)
    roots = DataRoots((str(tree / "link_to_data"),))
    assert roots.resolve(str(tree / "data" / "run1" / "s001.tif"))
    assert roots.resolve(str(tree / "link_to_data" / "run1" / "s001.tif"))


@pytest.mark.parametrize("ref", ["s3://bucket/key.tif", "https://host/a.tif", "globus://x/y"])
def test_unsupported_schemes_are_refused(tree, ref):
    roots = DataRoots((str(tree / "data"),))
    with pytest.raises(UnsupportedFormatError, match="references are not supported"):
        roots.resolve(ref)


def test_check_all_names_the_offending_tile(tree):
    roots = DataRoots((str(tree / "data"),))
    roots.check_all([str(tree / "data" / "run1" / "s001.tif")])
    bad = str(tree / "secret" / "key.tif")
    with pytest.raises(AccessDeniedError, match=r"key\.tif"):
        roots.check_all([str(tree / "data" / "run1" / "s001.tif"), bad])


def test_roots_must_be_absolute():
    with pytest.raises(ConfigError, match="not an absolute path"):
        DataRoots(("relative/dir",))
    with pytest.raises(ConfigError, match="sequence of folders"):
        DataRoots("/data")  # type: ignore[arg-type]
