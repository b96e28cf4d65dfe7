"""The docs stay true to the code: the CLI reference is generated from the parser, every
command is in it, and relative links lead to files that exist."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
GENERATOR = ROOT / "tools" / "gen_cli_reference.py"
LINKED_FILES = [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]


def _generator():
    spec = importlib.util.spec_from_file_location("gen_cli_reference", GENERATOR)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cli_reference_is_up_to_date():
    """docs/cli.md equals what tools/gen_cli_reference.py makes from scopefx.cli.build_parser()."""
    run = subprocess.run(
        [sys.executable, str(GENERATOR), "--check"], capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stderr


def test_every_subcommand_is_in_cli_reference():
    from scopefx.cli import build_parser

    text = (DOCS / "cli.md").read_text()
    names = _generator().subcommands(build_parser())
    assert "focus" in names and "fuse" in names, names
    headings = set(re.findall(r"^#{2,4} scopefx (.+)$", text, re.MULTILINE))
    missing = [n for n in names if n not in headings]
    assert not missing, (
        f"docs/cli.md has no section for {missing}; run python tools/gen_cli_reference.py"
    )


_FENCE = re.compile(r"^(```|~~~).*?^\1", re.MULTILINE | re.DOTALL)
_CODE_SPAN = re.compile(r"(`+).+?\1", re.DOTALL)
_INLINE = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+[\"'][^)]*[\"'])?\s*\)")
_REFERENCE = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+.*)?$", re.MULTILINE)


def relative_links(text: str) -> list[str]:
    """Link and image targets of Markdown ``text`` that are paths in this repository (code
    blocks and code spans, web addresses and in-page anchors left out), anchors stripped."""
    text = _CODE_SPAN.sub("", _FENCE.sub("", text))
    targets = _INLINE.findall(text) + _REFERENCE.findall(text)
    out = []
    for target in targets:
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.IGNORECASE) or target.startswith("#"):
            continue  # http(s):, mailto:, ... and anchors in the same page
        out.append(target.split("#", 1)[0])
    return out


def test_relative_links_finds_paths_only():
    text = (
        '[a](docs/x.md) ![b](images/y.png "title") [c](https://e.org) [d](#top) '
        "[e](../endpoints/#x) `[f](no.md)`\n```\n[g](no.md)\n```\n[h]: ref.md\n"
    )
    assert relative_links(text) == ["docs/x.md", "images/y.png", "../endpoints/", "ref.md"]


@pytest.mark.parametrize("doc", LINKED_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_point_to_existing_files(doc):
    broken = [t for t in relative_links(doc.read_text()) if not (doc.parent / t).exists()]
    assert not broken, f"{doc.relative_to(ROOT)} links to missing files: {broken}"


def test_docs_index_lists_every_doc():
    index = (DOCS / "README.md").read_text()
    listed = set(relative_links(index))
    missing = [p.name for p in sorted(DOCS.glob("*.md")) if p.name != "README.md"]
    missing = [name for name in missing if name not in listed]
    assert not missing, f"docs/README.md does not list {missing}: add one line for each"


def test_the_first_python_example_of_the_fusion_docs_runs(tmp_path, monkeypatch):
    """docs/fusion.md's first Python block, run as written on a small grey mosaic
    (``tiles.csv``: 3 x 3 tiles of 128 px). Before: its ``fuse_lazy`` line indexed a channel
    axis that a grey mosaic does not have (IndexError)."""
    from scopefx.samples import make_mosaic, write_mosaic

    text = (DOCS / "fusion.md").read_text()
    block = re.search(r"```python\n(.*?)```", text, re.S)
    assert block is not None and "fuse_lazy" in block.group(1)
    write_mosaic(tmp_path, make_mosaic(grid=(3, 3), tile_px=128, jitter_px=2))
    monkeypatch.chdir(tmp_path)
    exec(compile(block.group(1), "docs/fusion.md", "exec"), {})  # our own docs
    assert (tmp_path / "mosaic.ome.zarr").is_dir() and (tmp_path / "big.ome.zarr").is_dir()
