"""The `smtpo` command. Each area registers its subcommands through `add_commands(groups)` in its own `cli`
module, listed in `COMMAND_MODULES`; `groups` maps a top-level verb ("data", "eval", "train", ...) to its
argparse subparsers, created on first use, so another area can add `train simulator` or `eval recommender`
without touching this file beyond one line in the list."""

from __future__ import annotations

import argparse
import ast
import dataclasses
import importlib
import inspect
import sys
import textwrap

COMMAND_MODULES = [
    "smtpo_fast.data.cli",
    "smtpo_fast.retriever.cli",
    "smtpo_fast.simulator.cli",
    "smtpo_fast.pipeline",
]

GROUP_HELP = {
    "data": "read, inspect, download and synthesise dialogue data",
    "train": "train a component",
    "eval": "evaluate a component",
}


def field_docs(cls) -> dict[str, str]:
    """The docstrings written under each field of a dataclass (the TRL-style config convention)."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError):
            continue
        body = tree.body[0].body
        for node, after in zip(body, body[1:]):
            if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and isinstance(after, ast.Expr)
                    and isinstance(after.value, ast.Constant) and isinstance(after.value.value, str)):
                docs[node.target.id] = " ".join(after.value.value.split())
    return docs


GIVEN = "_given_flags"
"""Namespace attribute: the dests of the config flags the user typed (see `given_flags`)."""


def _recording(action_cls):
    """`action_cls` that also records its dest in the namespace's GIVEN set when the flag is on the command line."""

    class Recording(action_cls):
        def __call__(self, parser, namespace, values, option_string=None):
            super().__call__(parser, namespace, values, option_string)
            given = set(getattr(namespace, GIVEN, ()))
            given.add(self.dest)
            setattr(namespace, GIVEN, given)

    return Recording


_STORE, _BOOL = _recording(argparse._StoreAction), _recording(argparse.BooleanOptionalAction)


def add_config_arguments(parser: argparse.ArgumentParser, cls, skip=(), prefix: str = "") -> None:
    """One `--flag` per dataclass field, typed from its default, with the field's docstring as help. Which flags
    were typed is recorded (`given_flags`), so a YAML recipe is overridden by exactly those, also when a typed value
    equals the field's default."""
    docs = field_docs(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        flag = "--" + prefix + f.name.replace("_", "-")
        default = f.default
        help_text = f"{docs.get(f.name, '')} (default: {default})"
        if isinstance(default, bool):
            parser.add_argument(flag, dest=prefix + f.name, default=default, action=_BOOL, help=help_text)
        else:
            kind = type(default) if default is not None else str
            parser.add_argument(flag, dest=prefix + f.name, type=kind, default=default, action=_STORE,
                                help=help_text)


def given_flags(args: argparse.Namespace, cls, prefix: str = "") -> dict:
    """{field: value} of the `cls` fields whose flags (added by `add_config_arguments`) were on the command line."""
    given = getattr(args, GIVEN, set())
    return {f.name: getattr(args, prefix + f.name) for f in dataclasses.fields(cls) if prefix + f.name in given}


def config_from_args(cls, args: argparse.Namespace, prefix: str = "", **overrides):
    values = {f.name: getattr(args, prefix + f.name) for f in dataclasses.fields(cls)
              if hasattr(args, prefix + f.name)}
    values.update(overrides)
    return cls(**values)


class CommandGroups(dict):
    """verb -> subparsers of `smtpo <verb>`, created on first request."""

    def __init__(self, root_subparsers):
        super().__init__()
        self.root = root_subparsers

    def __missing__(self, verb: str):
        parser = self.root.add_parser(verb, help=GROUP_HELP.get(verb, f"{verb} commands"),
                                      description=GROUP_HELP.get(verb))
        sub = parser.add_subparsers(dest="subcommand", metavar="COMMAND", required=True)
        self[verb] = sub
        return sub


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="smtpo", description="SMTPO: simulator-guided multi-turn preference optimisation for conversational "
                                  "recommendation.")
    root = parser.add_subparsers(dest="command", metavar="GROUP", required=True)
    groups = CommandGroups(root)
    for name in COMMAND_MODULES:
        importlib.import_module(name).add_commands(groups)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        result = args.handler(args)
    except KeyboardInterrupt:
        return 130
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
