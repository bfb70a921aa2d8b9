"""Bash completion generated from the argparse tree, so it never drifts from the CLI."""

from __future__ import annotations

import argparse


def _walk(parser: argparse.ArgumentParser, path: str, table: dict[str, list[str]]) -> None:
    words: list[str] = []
    for action in parser._actions:  # argparse has no public API for this
        words += [o for o in action.option_strings if o.startswith("--")]
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                words.append(name)
                _walk(sub, f"{path} {name}".strip(), table)
    table[path] = sorted(set(words))


def bash_completion(parser: argparse.ArgumentParser) -> str:
    table: dict[str, list[str]] = {}
    _walk(parser, "", table)
    cases = "\n".join(
        f'        "{path}") words="{" ".join(ws)}" ;;' for path, ws in sorted(table.items())
    )
    return f"""# bash completion for vmmgr: eval "$(vmmgr completion bash)"
_vmmgr() {{
    local cur path w words
    cur="${{COMP_WORDS[COMP_CWORD]}}"
    path=""
    for w in "${{COMP_WORDS[@]:1:COMP_CWORD-1}}"; do
        case "$w" in -*) ;; *) path="${{path:+$path }}$w" ;; esac
    done
    case "$path" in
{cases}
        *) words="" ;;
    esac
    COMPREPLY=($(compgen -W "$words" -- "$cur"))
}}
complete -F _vmmgr vmmgr"""
