"""Write docs/cli.md, the command-line reference, from the parser the ``scopefx`` command uses.

    python tools/gen_cli_reference.py            # (re)write docs/cli.md
    python tools/gen_cli_reference.py --check    # exit 1 if docs/cli.md is not up to date

The reference is built from ``scopefx.cli.build_parser()`` of this checkout (``src/`` is put
first on the import path): every subcommand the parser has, found by walking its subparsers, so
a new subcommand appears once the file is regenerated. For each: its one-line help, description,
a synopsis, the positional arguments and every option group with help text and defaults.

The output depends on nothing but the parser. argparse's own help formatter is not used (its
layout changes between Python versions and with the terminal width); the synopsis is composed
here, ``COLUMNS`` is fixed anyway, and the parser is built with the user's scopefx settings
removed from the environment (``SCOPEFX_*``, ``XDG_*``) and ``HOME`` pointing to a placeholder
that is written as ``~``. A default that still varies between machines (a core count, say)
makes ``--check`` fail on some of them: describe such defaults in the help text instead.
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
TARGET = ROOT / "docs" / "cli.md"
WIDTH = 100
_HOME = "/scopefx-docs-home"  # HOME while the parser is built; written as "~"


@contextlib.contextmanager
def _isolated_environment() -> Iterator[None]:
    """Make the parser's defaults and argparse's formatting independent of this machine."""
    saved = dict(os.environ)
    try:
        for name in list(os.environ):
            if name.startswith(("SCOPEFX_", "XDG_")):
                del os.environ[name]
        os.environ.update(HOME=_HOME, COLUMNS=str(WIDTH), LINES="50")
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def build_parser() -> argparse.ArgumentParser:
    """``scopefx.cli.build_parser()`` of this checkout, built in an isolated environment."""
    src = str(ROOT / "src")
    if src not in sys.path:
        sys.path.insert(0, src)
    from scopefx.cli import build_parser as build

    with _isolated_environment():
        return build()


def _subparsers_action(parser: argparse.ArgumentParser) -> Any:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action
    return None


def walk(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser, str]]:
    """Every subcommand under ``parser``, depth first in the parser's order: (names, parser,
    one-line help). Aliases are listed once, under their first name."""
    action = _subparsers_action(parser)
    if action is None:
        return
    helps = {choice.dest: choice.help or "" for choice in action._choices_actions}
    seen: set[int] = set()
    for name, sub in action.choices.items():
        if id(sub) in seen:
            continue
        seen.add(id(sub))
        yield (*path, name), sub, helps.get(name, "")
        yield from walk(sub, (*path, name))


def subcommands(parser: argparse.ArgumentParser) -> list[str]:
    """Full names of every subcommand, e.g. ``["focus", "calibrate", ...]``."""
    return [" ".join(names) for names, _, _ in walk(parser)]


# --------------------------------------------------------------------------------------------
# text


def _scrub(text: str) -> str:
    return text.replace(_HOME, "~")


def _md(text: str) -> str:
    """Plain help text for a Markdown table cell."""
    return _scrub(" ".join(text.split())).replace("|", "\\|")


def _code(text: str) -> str:
    """``text`` as inline code in a table cell."""
    text = _scrub(text).replace("|", "\\|")
    return f"`` {text} ``" if "`" in text else f"`{text}`"


def _expand_help(action: argparse.Action, prog: str) -> str:
    """The help text with ``%(default)s`` and friends filled in, as argparse would."""
    if not action.help or action.help == argparse.SUPPRESS:
        return ""
    params = {k: v for k, v in vars(action).items() if v is not argparse.SUPPRESS}
    params["prog"] = prog
    for key, value in list(params.items()):
        if hasattr(value, "__name__"):
            params[key] = value.__name__
    if params.get("choices") is not None:
        params["choices"] = ", ".join(str(c) for c in params["choices"])
    return action.help % params


def _metavar(action: argparse.Action) -> str:
    if action.metavar is not None:
        return str(action.metavar) if not isinstance(action.metavar, tuple) else action.metavar[0]
    if action.choices is not None:
        return "{" + ",".join(str(c) for c in action.choices) + "}"
    return action.dest if not action.option_strings else action.dest.upper()


def _args(action: argparse.Action) -> str:
    """The argument part of an action in a synopsis (``PATHS [PATHS ...]``, ``OUT``, ``""``)."""
    if action.nargs == 0:
        return ""
    m = _metavar(action)
    return {
        None: m,
        "?": f"[{m}]",
        "*": f"[{m} ...]",
        "+": f"{m} [{m} ...]",
        argparse.REMAINDER: "...",
    }.get(action.nargs, " ".join([m] * action.nargs) if isinstance(action.nargs, int) else m)


def _option(action: argparse.Action) -> str:
    args = _args(action)
    name = max(action.option_strings, key=len)
    return f"{name} {args}" if args else name


def _default(action: argparse.Action, help_text: str) -> str:
    """A default worth showing that the help text does not show already."""
    default = action.default
    if action.nargs == 0 or default in (None, argparse.SUPPRESS) or action.required:
        return ""
    if "%(default)" in (action.help or "") or "default" in help_text.lower():
        return ""
    if isinstance(default, (list, tuple)):
        default = " ".join(str(v) for v in default)
    return f"default: {_scrub(str(default))}"


def synopsis(parser: argparse.ArgumentParser, names: Sequence[str]) -> str:
    """``scopefx NAME`` with the required options and the positional arguments."""
    prog = " ".join(["scopefx", *names])
    words = [prog]
    exclusive = {
        id(a): group for group in parser._mutually_exclusive_groups for a in group._group_actions
    }
    done: set[int] = set()
    optional = False
    for action in parser._actions:
        if not action.option_strings or not _shown(action):
            continue
        group = exclusive.get(id(action))
        if group is not None and group.required:
            if id(group) not in done:
                done.add(id(group))
                words.append("(" + " | ".join(_option(a) for a in group._group_actions) + ")")
        elif action.required:
            words.append(_option(action))
        else:
            optional = True
    if optional:
        words.append("[options]")
    for action in parser._actions:
        if action.option_strings or action.help == argparse.SUPPRESS:
            continue
        if isinstance(action, argparse._SubParsersAction):
            words.append(f"{_metavar(action)} ...")
        else:
            words.append(_args(action))
    return " ".join(words)


def _anchor(names: Sequence[str]) -> str:
    return "-".join(["scopefx", *names])


def _shown(action: argparse.Action) -> bool:
    """Whether an action gets a row: not hidden, not -h/--help (every command has it), not the
    subcommand list (each subcommand has its own section)."""
    return action.help != argparse.SUPPRESS and not isinstance(
        action, (argparse._HelpAction, argparse._SubParsersAction)
    )


def _notes(parser: argparse.ArgumentParser, action: argparse.Action, prog: str) -> str:
    help_text = _expand_help(action, prog)
    notes = [help_text] if help_text else []
    default = _default(action, help_text)
    if default:
        notes.append(f"({default})" if help_text else default)
    if action.required and action.option_strings:  # positionals: the synopsis shows it
        notes.append("(required)")
    for group in parser._mutually_exclusive_groups:
        if action in group._group_actions:
            names = [max(a.option_strings, key=len) for a in group._group_actions]
            kind = "one of" if group.required else "at most one of"
            notes.append(f"({kind} {', '.join(names)})")
    return _md(" ".join(notes))


def _group_table(parser: argparse.ArgumentParser, group: Any, prog: str) -> list[str]:
    actions = [a for a in group._group_actions if _shown(a)]
    if not actions:
        return []
    if not any(a.option_strings for a in actions):
        rows = [f"| {_code(_args(a))} | {_notes(parser, a, prog)} |" for a in actions]
        return [f"**{group.title}**", "", "| argument | description |", "| --- | --- |", *rows, ""]
    rows = []
    for a in actions:
        args = _args(a)
        if a.option_strings:
            names, value = (
                ", ".join(_code(o) for o in a.option_strings),
                _code(args) if args else "",
            )
        else:
            names, value = _code(args), ""
        rows.append(f"| {names} | {value} | {_notes(parser, a, prog)} |")
    head = ["| option | argument | description |", "| --- | --- | --- |"]
    return [f"**{group.title}**", "", *head, *rows, ""]


def _groups(parser: argparse.ArgumentParser, prog: str) -> list[str]:
    lines: list[str] = []
    for group in parser._action_groups:
        lines += _group_table(parser, group, prog)
    return lines


def _docstring_notes() -> list[str]:
    """The paragraphs after the first line of ``scopefx.cli``'s docstring (exit codes)."""
    import scopefx.cli

    doc = (scopefx.cli.__doc__ or "").strip().split("\n\n")[1:]
    return [" ".join(p.split()).replace("``", "`") for p in doc if p.strip()]


def render(parser: argparse.ArgumentParser) -> str:
    out = [
        "<!-- Generated by tools/gen_cli_reference.py from scopefx.cli.build_parser(); do not "
        "edit.",
        "     After changing the CLI: python tools/gen_cli_reference.py -->",
        "",
        "# Command-line reference",
        "",
        _scrub(" ".join((parser.description or "").split())),
        "",
    ]
    out += [*(f"{p}\n" for p in _docstring_notes())]
    out += ["Every command also takes `-h` / `--help`.", ""]
    out += ["| command | what it does |", "| --- | --- |"]
    for names, _, help_text in walk(parser):
        label = " ".join(["scopefx", *names])
        out.append(f"| [`{label}`](#{_anchor(names)}) | {_md(help_text)} |")
    out += ["", f"`{synopsis(parser, ())}`", ""]
    out += _groups(parser, "scopefx")
    for names, sub, help_text in walk(parser):
        prog = " ".join(["scopefx", *names])
        out += [f"{'#' * min(2 + len(names) - 1, 4)} {prog}", ""]
        description = " ".join((sub.description or help_text or "").split())
        if description:
            out += [_scrub(description), ""]
        out += ["```", synopsis(sub, names), "```", ""]
        out += _groups(sub, prog)
    text = "\n".join(out)
    while "\n\n\n" in text:
        text = text.replace("\n\n\n", "\n\n")
    return text.rstrip("\n") + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Write docs/cli.md from scopefx.cli.build_parser() (or check it)."
    )
    parser.add_argument(
        "--check", action="store_true", help="exit 1 if the file differs from what would be written"
    )
    parser.add_argument(
        "-o", "--output", type=Path, default=TARGET, help="default: docs/cli.md of this checkout"
    )
    args = parser.parse_args(argv)
    text = render(build_parser())
    if args.check:
        current = args.output.read_text() if args.output.exists() else ""
        if current == text:
            return 0
        diff = list(
            difflib.unified_diff(
                current.splitlines(), text.splitlines(), "on disk", "from the parser", lineterm=""
            )
        )
        shown = "\n".join(diff[:40]) + ("\n..." if len(diff) > 40 else "")
        print(
            f"{args.output} is out of date with scopefx.cli.build_parser():\n{shown}\n"
            "Regenerate it with: python tools/gen_cli_reference.py",
            file=sys.stderr,
        )
        return 1
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
