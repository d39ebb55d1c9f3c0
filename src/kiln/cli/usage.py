"""One style for every verb: the parser class (a "did you mean" for a mistyped verb or choice,
the verb's own usage on a mistake), the flags every verb has (-q/-v), and the words a bad flag
gets (`--epochs 3` is `epochs=3`)."""

from __future__ import annotations

import argparse
import difflib
import re
import sys
from collections.abc import Iterator

CHOICE = re.compile(r"invalid choice: '([^']*)' \(choose from (.*)\)")


class KilnParser(argparse.ArgumentParser):
    """argparse, with a suggestion when a verb or a choice is mistyped."""

    def error(self, message: str):
        found = CHOICE.search(message)
        if found:
            word, listed = found.group(1), found.group(2)
            choices = [c.strip().strip("'") for c in listed.split(",")]
            close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
            if close:
                message += f"; did you mean '{close[0]}'?"
        super().error(message)


def leaves(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    """The parsers that run something (`kiln train`, `kiln data show`, ...)."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield parser
        return
    for sub in subs:
        for child in dict.fromkeys(sub.choices.values()):
            yield from leaves(child)


def finish(parser: argparse.ArgumentParser) -> None:
    """Give every verb -q/--quiet and -v/--verbose, and remember its parser (for its usage)."""
    for leaf in leaves(parser):
        group = leaf.add_argument_group("output")
        group.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
        group.add_argument("-v", "--verbose", action="store_true", help="more detail (debug)")
        leaf.set_defaults(verb_parser=leaf)


def reject(ns: argparse.Namespace, extra: list[str], argv: list[str] | None = None) -> None:
    """Arguments the verb does not take: its own usage, and what was meant where it can tell
    (`--epochs 3`: settings are `epochs=3`; `--chekpoint`: `--checkpoint`)."""
    parser: argparse.ArgumentParser = getattr(ns, "verb_parser", None) or KilnParser(prog="kiln")
    argv = list(sys.argv[1:] if argv is None else argv)
    hints = []
    flags = [s for a in parser._actions for s in a.option_strings if s.startswith("--")]
    for word in extra:
        if not word.startswith("--"):
            continue
        name = word[2:].split("=", 1)[0]
        close = difflib.get_close_matches(word.split("=", 1)[0], flags, n=1, cutoff=0.7)
        if close:
            hints.append(f"{word}: did you mean {close[0]}?")
        elif hasattr(ns, "overrides") or hasattr(ns, "args"):
            at = argv.index(word) if word in argv else -1
            following = argv[at + 1] if 0 <= at < len(argv) - 1 else ""
            value = word.split("=", 1)[1] if "=" in word else following
            if not value or value.startswith("-") or "=" in value:
                value = "..."
            hints.append(f"{word}: settings are key=value, e.g. {name.replace('-', '_')}={value}")
    said = f" ({'; '.join(hints)})" if hints else ""
    parser.error(f"unrecognized arguments: {' '.join(extra)}{said}")
