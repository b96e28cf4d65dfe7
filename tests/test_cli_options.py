"""The CLI's options come from one place each: the focus options from ``FocusParams``' fields,
the verdict options declared once for ``focus`` and ``watch``; the ``cli`` and ``samples``
packages have no import circles."""

from __future__ import annotations

import argparse
import ast
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pytest

import scopefx
from scopefx.cli import build_parser
from scopefx.cli._common import _doc_entries, add_params_options, focus_params, params_from_args
from scopefx.focus import FocusParams

SRC = Path(scopefx.__file__).parent
COMMANDS_WITH_FOCUS_OPTIONS = ("focus", "calibrate", "watch")


def _subparser(name: str) -> argparse.ArgumentParser:
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices[name]


def _options(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {a.dest: a for a in parser._actions if a.option_strings}


@pytest.mark.parametrize("command", COMMANDS_WITH_FOCUS_OPTIONS)
def test_every_focus_parameter_has_an_option(command):
    options = _options(_subparser(command))
    for field in dataclasses.fields(FocusParams):
        assert field.name in options, f"scopefx {command}: no option for {field.name}"
        assert _doc_entries(FocusParams).get(field.name, ([], ""))[1], (
            f"FocusParams.{field.name} has no entry under Parameters in FocusParams' docstring "
            "(the option's help comes from it)"
        )
        assert not options[field.name].help.startswith("(default"), options[field.name].help


@pytest.mark.parametrize("command", COMMANDS_WITH_FOCUS_OPTIONS)
def test_the_defaults_are_focus_params_defaults(command):
    parser = _subparser(command)
    argv = {"focus": ["x.tif"], "calibrate": ["--defocus", "d.csv", "-o", "c"], "watch": ["d"]}
    args = parser.parse_args(argv[command])
    assert focus_params(args) == FocusParams()


def test_flag_names_are_kept_and_values_reach_the_params():
    parser = _subparser("focus")
    flags = {s for a in parser._actions for s in a.option_strings}
    for flag in ("--n-scales", "--min-sigma", "--max-sigma", "--saturation", "--polarity",
                 "--threshold", "--threshold-k", "--mode", "--target-px", "--cell-px"):  # fmt: skip
        assert flag in flags
    args = parser.parse_args(
        ["x.tif", "--min-sigma", "1.5", "--max-sigma", "20", "--saturation", "0.5",
         "--polarity", "both", "--threshold", "0.01", "--target-px", "512", "--mode", "fast"]
    )  # fmt: skip
    assert focus_params(args) == FocusParams(
        min_sigma_px=1.5, max_sigma_px=20.0, saturation_pct=0.5, polarity="both",
        threshold=0.01, target_px=512, mode="fast",
    )  # fmt: skip
    with pytest.raises(SystemExit):
        parser.parse_args(["x.tif", "--polarity", "sideways"])  # choices from the Literal


@dataclass(frozen=True)
class _Grown:
    """Parameters with fields of every kind a new one may have.

    Parameters
    ----------
    modality : {"sem", "light"}
        Imaging modality of the run. It picks the defaults.
    channel : int or None
        Channel of a multichannel image to score; ``None``: the first.
    gain_db, offset : float
        Detector gain and offset. Rarely needed.
    denoise : bool
        Denoise before scoring.
    """

    modality: Literal["sem", "light"] = "sem"
    channel: int | None = None
    gain_db: float = 0.0
    offset: float = 0.0
    denoise: bool = False


def test_a_new_field_gets_its_option_without_a_change_to_the_cli():
    parser = argparse.ArgumentParser()
    add_params_options(parser, _Grown, title="grown", aliases={"offset": ("--dc", "ADU")})
    options = _options(parser)
    assert options["modality"].choices == ("sem", "light")
    assert options["modality"].help == "Imaging modality of the run. (default: %(default)s)"
    assert options["channel"].type is int and options["channel"].default is None
    assert options["offset"].option_strings == ["--dc"] and options["offset"].metavar == "ADU"
    assert options["gain_db"].help.startswith("Detector gain and offset.")
    args = parser.parse_args(["--modality", "light", "--channel", "2", "--dc", "3", "--denoise"])
    assert params_from_args(args, _Grown) == _Grown("light", 2, 0.0, 3.0, True)
    assert params_from_args(parser.parse_args([]), _Grown) == _Grown()


@pytest.mark.parametrize("command", COMMANDS_WITH_FOCUS_OPTIONS)
def test_each_focus_option_says_what_it_does(command):
    """--min-sigma and --max-sigma had one text between them, --noise-model described only
    'global', --mode only 'exact', --channel only colour (H, W, 3|4) images."""
    options = _options(_subparser(command))
    helps = {f.name: options[f.name].help for f in dataclasses.fields(FocusParams)}
    assert len(set(helps.values())) == len(helps), "two focus options share a help text"
    assert helps["min_sigma_px"].startswith("Smallest Gaussian standard deviation")
    assert helps["max_sigma_px"].startswith("Largest Gaussian standard deviation")
    for name, words in {
        "noise_model": ('"global"', '"signal"'),
        "mode": ('"exact"', '"fast"'),
        "polarity": ('"dark"', '"bright"', '"both"'),
        "channel": ("(H, W, 3|4)", "luma", "(H, W, 2)"),
        "threshold": ("`None` (default) chooses it per image",),
    }.items():
        for word in words:
            assert word in helps[name], (name, word, helps[name])
    assert "(default: None)" not in " ".join(helps.values())  # the help says what None does
    assert helps["polarity"].endswith("(default: from --modality)")


def test_the_verdict_options_are_the_same_for_focus_and_watch():
    names = ("calibration", "ratio", "window", "warmup")
    focus, watch = _options(_subparser("focus")), _options(_subparser("watch"))
    for name in names:
        a, b = focus[name], watch[name]
        assert (a.option_strings, a.type, a.default, a.help) == (
            b.option_strings, b.type, b.default, b.help
        )  # fmt: skip


def _imports(path: Path, package: str) -> set[str]:
    """Modules of ``package`` that ``path`` imports (relative imports resolved)."""
    tree = ast.parse(path.read_text())
    here = f"{package}.{path.stem}" if path.stem != "__init__" else package
    parent = package  # a module's and the __init__'s relative imports start at the package
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = parent.rsplit(".", node.level - 1)[0] if node.level > 1 else parent
            target = f"{base}.{node.module}" if node.module else base
            if node.module is None:  # from . import a, b
                found |= {f"{base}.{alias.name}" for alias in node.names}
            else:
                found.add(target)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
    return {m for m in found if m.startswith(package + ".") and m != here}


@pytest.mark.parametrize("package", ["cli", "samples"])
def test_no_import_circles_inside_the_package(package):
    """Command modules import only ``_common`` (and the public API); the package's
    ``__init__`` imports them, never the other way round."""
    name = f"scopefx.{package}"
    folder = SRC / package
    graph = {
        (f"{name}.{p.stem}" if p.stem != "__init__" else name): _imports(p, name)
        for p in folder.glob("*.py")
    }

    def reaches(start: str, goal: str, seen: frozenset[str] = frozenset()) -> bool:
        return any(
            nxt == goal or (nxt not in seen and reaches(nxt, goal, seen | {nxt}))
            for nxt in graph.get(start, ())
        )

    circles = [m for m in graph if reaches(m, m)]
    assert not circles, {m: graph[m] for m in circles}
    if package == "cli":
        for module, deps in graph.items():
            if module != name:
                assert deps <= {f"{name}._common"}, (module, deps)


def test_the_old_modules_are_gone():
    for old in ("cli.py", "_cli_fuse.py", "_cli_watch.py", "_cli_remote.py", "_demo.py",
                "samples.py", "_samples_mosaic.py"):  # fmt: skip
        assert not (SRC / old).exists(), old
