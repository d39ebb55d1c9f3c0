"""`kiln completion bash|zsh`: a shell completion script made from the parser itself (verbs,
actions, each verb's flags and choices, then file names), so it never falls behind the CLI.

    eval "$(kiln completion bash)"     # in ~/.bashrc
    eval "$(kiln completion zsh)"      # in ~/.zshrc
"""

from __future__ import annotations

import argparse
import shlex

TEMPLATE = """# kiln completion for {shell}: eval "$(kiln completion {shell})"
{preamble}_kiln() {{
    local cur="${{COMP_WORDS[COMP_CWORD]}}" words=""
    local verb="${{COMP_WORDS[1]}}" action="${{COMP_WORDS[2]}}"
    if [[ $COMP_CWORD -eq 1 ]]; then
        words={verbs}
    else
        case "$verb" in
{cases}
        esac
    fi
    COMPREPLY=($(compgen -W "$words" -- "$cur"))
    if [[ "$cur" != -* && "$cur" != *=* ]]; then
        COMPREPLY+=($(compgen -f -- "$cur"))
    fi
}}
complete -o filenames -F _kiln kiln
"""


def words(parser: argparse.ArgumentParser) -> list[str]:
    """What may follow a verb: its flags and the choices of its positional arguments."""
    found: list[str] = []
    for action in parser._actions:
        if action.help == argparse.SUPPRESS:
            continue
        if action.option_strings:
            found += [
                s for s in action.option_strings if s.startswith("--")
            ] or action.option_strings
        elif action.choices and not isinstance(action, argparse._SubParsersAction):
            found += list(action.choices)
    return found


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def script(parser: argparse.ArgumentParser, shell: str) -> str:
    verbs = _subparsers(parser)
    cases = []
    for verb, sub in verbs.items():
        actions = _subparsers(sub)
        if actions:  # kiln data show|stats|make, kiln config show
            inner = "\n".join(
                f"                {name}) words={shlex.quote(' '.join(words(p)))} ;;"
                for name, p in actions.items()
            )
            listed = shlex.quote(" ".join(actions))
            body = (
                f"            if [[ $COMP_CWORD -eq 2 ]]; then words={listed}\n"
                f'            else case "$action" in\n{inner}\n            esac; fi ;;'
            )
            cases.append(f"            {verb})\n{body}")
        else:
            cases.append(f"            {verb}) words={shlex.quote(' '.join(words(sub)))} ;;")
    preamble = "autoload -U +X bashcompinit && bashcompinit\n" if shell == "zsh" else ""
    return TEMPLATE.format(
        shell=shell,
        preamble=preamble,
        verbs=shlex.quote(" ".join(verbs)),
        cases="\n".join(cases),
    )


def cmd_completion(ns: argparse.Namespace) -> int:
    from kiln.cli import build_parser

    print(script(build_parser(), ns.shell), end="")
    return 0


def add_parsers(verbs) -> None:
    p = verbs.add_parser(
        "completion",
        help="print a shell completion script (bash or zsh)",
        description="Print a completion script for kiln's verbs, flags and choices.",
        epilog='usage: eval "$(kiln completion bash)" in ~/.bashrc '
        '(zsh: eval "$(kiln completion zsh)" in ~/.zshrc)',
    )
    p.add_argument("shell", choices=["bash", "zsh"])
    p.set_defaults(func=cmd_completion)
