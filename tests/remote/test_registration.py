"""Registration payloads, the manifest, and the remote CLI commands."""

from __future__ import annotations

import concurrent.futures as cf
import io
import json
import os
import uuid
from pathlib import Path

import pytest

import scopefx
from scopefx.cli import main
from scopefx.errors import ConfigError
from scopefx.remote import FUNCTION_NAMES, Manifest, fill_allowed_functions, register_functions

SRC = Path(scopefx.__file__).resolve().parents[1]


@pytest.fixture
def config_home(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("SCOPEFX_CONFIG", raising=False)
    return tmp_path / "config" / "scopefx"


def test_register_sends_each_function_once(config_home):
    """Through globus_compute_sdk's real Client, up to the HTTP request."""
    pytest.importorskip("globus_compute_sdk")
    responses = pytest.importorskip("responses")
    import globus_sdk
    from globus_compute_sdk import Client as ComputeClient
    from globus_compute_sdk.serialize import ComputeSerializer

    gcc = ComputeClient(do_version_check=False, authorizer=globus_sdk.NullAuthorizer())
    url = gcc._compute_web_client.v3.base_url.rstrip("/") + "/v3/functions"
    ids = iter(str(uuid.uuid4()) for _ in FUNCTION_NAMES)
    with responses.RequestsMock() as mock:
        mock.add_callback(
            responses.POST,
            url,
            callback=lambda req: (200, {}, json.dumps({"function_uuid": next(ids)})),
        )
        manifest = register_functions(gcc, group=str(uuid.uuid4()))
        bodies = [json.loads(c.request.body) for c in mock.calls]
    assert [b["function_name"] for b in bodies] == list(FUNCTION_NAMES)
    assert all(b["description"].startswith(f"scopefx {scopefx.__version__}: ") for b in bodies)
    assert all("group" in b for b in bodies)
    serde = ComputeSerializer()
    for body in bodies:
        assert len(body["function_code"]) < 100_000
        (code,) = serde.unpack_buffers(body["function_code"])
        assert serde.deserialize(code).__name__ == body["function_name"]
    assert list(manifest.functions) == list(FUNCTION_NAMES)
    path = manifest.save()
    assert path == config_home / f"functions-{'.'.join(scopefx.__version__.split('.')[:2])}.json"
    again = Manifest.load(path)
    assert again.functions == manifest.functions and again.matches_installed()
    assert Manifest.find() == again


def test_manifest_errors(tmp_path):
    with pytest.raises(ConfigError, match="does not exist; run `scopefx register`"):
        Manifest.load(tmp_path / "nope.json")
    (tmp_path / "x.json").write_text("{}")
    with pytest.raises(ConfigError, match="not a scopefx function manifest"):
        Manifest.load(tmp_path / "x.json")
    with pytest.raises(ConfigError, match="not a UUID"):
        Manifest("0.1.0", {"score_focus": "abc"})
    with pytest.raises(ConfigError, match="unknown function"):
        register_functions(object(), names=["rm_rf"])


def test_fill_allowed_functions_keeps_the_rest():
    manifest = Manifest("0.1.0", {n: str(uuid.uuid4()) for n in FUNCTION_NAMES})
    text = (
        "# edge\ndisplay_name: edge  # shown\nallowed_functions:\n  - old-id\n\n"
        "idle_heartbeats_soft: 10\n"
    )
    filled = fill_allowed_functions(text, manifest)
    import yaml

    data = yaml.safe_load(filled)
    assert data["allowed_functions"] == list(manifest.functions.values())
    assert data["idle_heartbeats_soft"] == 10 and "# shown" in filled and "old-id" not in filled
    appended = yaml.safe_load(fill_allowed_functions("display_name: x\n", manifest))
    assert appended["allowed_functions"] == list(manifest.functions.values())
    with pytest.raises(ConfigError, match="lists no functions"):
        fill_allowed_functions(text, Manifest("0.1.0", {}))


def test_cli_endpoint_config(tmp_path, config_home):
    manifest = Manifest(scopefx.__version__, {n: str(uuid.uuid4()) for n in FUNCTION_NAMES})
    manifest.save()
    src = tmp_path / "config.yaml"
    src.write_text("display_name: edge\nallowed_functions: []\n")
    out = io.StringIO()
    assert main(["endpoint-config", str(src), "-o", str(tmp_path / "filled.yaml")], out=out) == 0
    assert manifest.functions["score_focus"] in (tmp_path / "filled.yaml").read_text()
    out = io.StringIO()
    main(["endpoint-config", str(src)], out=out)
    assert manifest.functions["endpoint_info"] in out.getvalue()


def test_cli_endpoint_config_without_manifest(tmp_path, config_home, capsys):
    (tmp_path / "c.yaml").write_text("display_name: x\n")
    with pytest.raises(SystemExit) as exc:
        main(["endpoint-config", str(tmp_path / "c.yaml")])
    assert exc.value.code == 2
    assert "run `scopefx register` first" in capsys.readouterr().err


def test_cli_endpoints_lists_local_and_configured(tmp_path, config_home):
    out = io.StringIO()
    assert main(["endpoints"], out=out) == 0
    text = out.getvalue()
    assert "everything runs locally" in text and f"scopefx {scopefx.__version__}" in text
    config = tmp_path / "endpoints.toml"
    endpoint_id = str(uuid.uuid4())
    config.write_text(
        f'[endpoints.pool]\nfactory = "test_client:make_pool"\nroles = ["focus"]\n'
        f'[endpoints.hpc]\nid = "{endpoint_id}"\nroles = ["fusion"]\n'
    )
    out = io.StringIO()
    assert main(["endpoints", "--config", str(config), "--json", "--no-check"], out=out) == 0
    rows = json.loads(out.getvalue())
    assert [(r["name"], r["roles"]) for r in rows] == [("pool", ["focus"]), ("hpc", ["fusion"])]
    out = io.StringIO()
    assert main(["endpoints", "--config", str(config), "--json"], out=out) == 0
    pool, hpc = json.loads(out.getvalue())
    assert pool["status"] == "ok" and pool["info"]["scopefx"] == scopefx.__version__
    assert hpc["status"] == "error"  # the Globus service cannot be reached from here
    # an entry that cannot be used here is named as a configuration problem, not "unreachable";
    # an endpoint's answer is shown with its control characters escaped
    config.write_text(
        '[endpoints.typo]\nfactory = "test_client:no_such_pool"\nroles = ["focus"]\n'
        '[endpoints.pool]\nfactory = "test_client:make_pool"\nroles = ["fusion"]\n'
    )
    from scopefx.remote import _tasks

    real_info = _tasks.endpoint_info
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(_tasks, "endpoint_info", lambda: {**real_info(), "host": "edge\x1b[2K\nok"})
        out = io.StringIO()
        assert main(["endpoints", "--config", str(config)], out=out) == 0
    text = out.getvalue()
    assert "not tried, configuration: endpoint 'typo': cannot load factory" in text
    assert "unreachable" not in text and "\x1b" not in text
    assert "host edge\\x1b[2K\\nok" in text


def test_cli_focus_and_fuse_on_a_configured_endpoint(tmp_path, data_root, config_home, monkeypatch):
    monkeypatch.chdir(data_root)
    config = tmp_path / "endpoints.toml"
    config.write_text('[endpoints.pool]\nfactory = "test_client:make_pool"\nroles = []\n')
    refs = [f"run1/section_{i:04d}.tif" for i in range(12)]
    out = io.StringIO()
    args = ["focus", *refs, "run1/corrupt.tif", "--endpoint", "pool", "--config", str(config)]
    assert main([*args, "--csv", str(tmp_path / "f.csv"), "-q"], out=out) == 0
    text = out.getvalue()
    assert "scored 12 image(s), 2 flagged, 1 not scored" in text
    assert "run1/section_0005.tif" in text and "corrupt: run1/corrupt.tif" in text
    out = io.StringIO()
    fuse_args = ["fuse", "mosaic/tiles.csv", "-o", "out/cli.ome.zarr", "--chunk", "64"]
    assert main([*fuse_args, "--endpoint", "pool", "--config", str(config), "--regions", "3",
                 "--json", str(tmp_path / "s.json")], out=out) == 0  # fmt: skip
    assert "out/cli.ome.zarr (on the endpoint)" in out.getvalue()
    assert json.loads((tmp_path / "s.json").read_text())["n_tiles"] == 9


@pytest.mark.parametrize(
    ("credentials", "says"),
    [
        ({}, "not logged in to Globus Compute, and no terminal"),
        ({"GLOBUS_COMPUTE_CLIENT_SECRET": "x"}, "Both GLOBUS_COMPUTE_CLIENT_ID and"),
    ],
    ids=["no-login", "secret-without-id"],
)
def test_register_without_a_terminal_says_what_to_do_in_one_line(
    tmp_path: Path, credentials: dict[str, str], says: str
) -> None:
    import subprocess
    import sys

    pytest.importorskip("globus_compute_sdk")
    env = {k: v for k, v in os.environ.items() if not k.startswith("GLOBUS_COMPUTE_CLIENT")}
    env.update(HOME=str(tmp_path), GLOBUS_COMPUTE_USER_DIR=str(tmp_path / "gc"), **credentials)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SRC), env.get("PYTHONPATH")]))
    done = subprocess.run(
        [sys.executable, "-m", "scopefx", "register"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and says in lines[0], done.stderr
    assert "GLOBUS_COMPUTE_CLIENT_ID" in lines[0]
    assert "Traceback" not in done.stderr and "authorize" not in done.stdout


# --------------------------------------------------------------------------------------------
# review 43: the CLI on an endpoint (batch_size from the file, folders sent as typed), a
# missing folder for endpoint-config's output, an endpoint of another version

#: score_focus batches the recording endpoint below was sent, in order.
sent: list[list[str]] = []


class _Recording(cf.ThreadPoolExecutor):
    def submit(self, fn, /, *args, **kwargs):
        if fn.__name__ == "score_focus":
            sent.append(list(args[0]))
        return super().submit(fn, *args, **kwargs)


def recording_pool() -> cf.Executor:
    """A factory named in the configurations below."""
    return _Recording(2)


def _recording_config(tmp_path: Path, top: str = "") -> Path:
    config = tmp_path / "endpoints.toml"
    config.write_text(f'{top}[endpoints.rec]\nfactory = "test_registration:recording_pool"\n')
    sent.clear()
    return config


def test_cli_takes_batch_size_from_the_configuration(tmp_path, data_root, config_home,
                                                     monkeypatch):  # fmt: skip
    monkeypatch.chdir(data_root)
    config = _recording_config(tmp_path, "batch_size = 5\n")
    args = ["focus", "run1", "-q", "--endpoint", "rec", "--config", str(config)]
    assert main(args, out=io.StringIO()) == 0
    assert [len(batch) for batch in sent] == [5, 5, 3]  # 13 images
    sent.clear()
    assert main([*args, "--batch-size", "6"], out=io.StringIO()) == 0  # the option wins
    assert [len(batch) for batch in sent] == [6, 6, 1]


def test_cli_sends_a_folder_as_typed(tmp_path, data_root, confined, config_home, monkeypatch):
    """The share is mounted at another path here (a copy) than on the endpoint (confined to
    its data roots): `focus run1 --endpoint` sends relative references, as for a file."""
    import csv
    import shutil

    mirror = tmp_path / "mirror"
    shutil.copytree(data_root / "run1", mirror / "run1")
    monkeypatch.chdir(mirror)
    config = _recording_config(tmp_path, "batch_size = 64\n")
    out = io.StringIO()
    args = ["focus", "run1", "--endpoint", "rec", "--config", str(config)]
    assert main([*args, "--csv", str(tmp_path / "f.csv"), "-q"], out=out) == 0
    refs = ["run1/corrupt.tif", *(f"run1/section_{i:04d}.tif" for i in range(12))]
    assert sent == [refs]
    assert "scored 12 image(s), 2 flagged, 1 not scored" in out.getvalue()
    with open(tmp_path / "f.csv", newline="") as f:
        assert [row["path"] for row in csv.DictReader(f)] == refs  # the references as sent
    sent.clear()
    assert main(["focus", "run1/section_001*.tif", *args[2:], "-q"], out=io.StringIO()) == 0
    assert sent == [["run1/section_0010.tif", "run1/section_0011.tif"]]


def test_cli_endpoint_config_into_a_missing_folder_is_one_line(tmp_path, config_home, capsys):
    Manifest(scopefx.__version__, {n: str(uuid.uuid4()) for n in FUNCTION_NAMES}).save()
    src = tmp_path / "config.yaml"
    src.write_text("display_name: edge\n")
    target = tmp_path / ".globus_compute" / "edge" / "config.yaml"
    with pytest.raises(SystemExit) as exc:
        main(["endpoint-config", str(src), "-o", str(target)])
    assert exc.value.code == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("scopefx endpoint-config: error: cannot write")
    assert "folder does not exist" in line and "globus-compute-endpoint configure" in line
    target.parent.mkdir(parents=True)
    target.write_text("display_name: old\n")
    target.chmod(0o640)
    assert main(["endpoint-config", str(src), "-o", str(target)], out=io.StringIO()) == 0
    assert "allowed_functions" in target.read_text() and target.stat().st_mode & 0o777 == 0o640
    assert os.listdir(target.parent) == ["config.yaml"]  # replaced whole, nothing left beside


def test_cli_endpoints_says_an_endpoint_of_another_version_answered(tmp_path, config_home,
                                                                   monkeypatch):  # fmt: skip
    from scopefx.remote import _tasks

    monkeypatch.setattr(_tasks, "__version__", "0.1.9")  # what endpoint_info reports
    config = tmp_path / "endpoints.toml"
    config.write_text('[endpoints.old]\nfactory = "test_client:make_pool"\nroles = ["focus"]\n')
    out = io.StringIO()
    assert main(["endpoints", "--config", str(config)], out=out) == 0
    text = out.getvalue()
    assert "unreachable" not in text
    assert "answered, incompatible: endpoint 'old' runs scopefx 0.1.9" in text
    assert "install the same scopefx version on both sides" in text
    out = io.StringIO()
    assert main(["endpoints", "--config", str(config), "--json"], out=out) == 0
    old = next(row for row in json.loads(out.getvalue()) if row["name"] == "old")
    assert old["status"] == "incompatible" and old["info"]["scopefx"] == "0.1.9"
