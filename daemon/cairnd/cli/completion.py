"""Shell completion scripts for bash and zsh, generated from the argparse parser so
they never drift from the commands: `source <(cairnd completion bash)`.

SESSION arguments complete to the ids `cairnd ls -q` prints."""

from __future__ import annotations

import argparse

# Commands whose first positional argument is a session id, and those that take a path.
_SESSION_COMMANDS = ("prompt", "fork", "rewind", "land", "diff", "cancel", "rm", "show", "tree")
_FILE_OPTIONS = ("-c", "--config", "--dir")


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:  # argparse keeps subparsers only here
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _options(parser: argparse.ArgumentParser) -> list[str]:
    return [option for action in parser._actions for option in action.option_strings]


def _choices(parser: argparse.ArgumentParser) -> list[str]:
    for action in parser._actions:
        if not action.option_strings and action.choices:
            return [str(choice) for choice in action.choices]
    return []


def bash_script(parser: argparse.ArgumentParser) -> str:
    commands = _subcommands(parser)
    cases = []
    for name, sub in commands.items():
        words = " ".join(_options(sub))
        if name in _SESSION_COMMANDS:
            positional = 'COMPREPLY=($(compgen -W "$(cairnd ls -q 2>/dev/null)" -- "$cur"))'
        elif name == "new":
            positional = 'COMPREPLY=($(compgen -d -- "$cur"))'
        elif _choices(sub):
            positional = f'COMPREPLY=($(compgen -W "{" ".join(_choices(sub))}" -- "$cur"))'
        else:
            positional = "COMPREPLY=()"
        cases.append(f'        {name}) opts="{words}"; positional() {{ {positional}; }} ;;')
    top = " ".join([*commands, *_options(parser)])
    file_options = "|".join(_FILE_OPTIONS)
    return f"""# bash completion for cairnd: source <(cairnd completion bash)
_cairnd() {{
    local cur prev cmd i opts
    cur="${{COMP_WORDS[COMP_CWORD]}}"
    prev="${{COMP_WORDS[COMP_CWORD-1]}}"
    case "$prev" in
        {file_options}) COMPREPLY=($(compgen -f -- "$cur")); return ;;
    esac
    cmd=""
    for ((i = 1; i < COMP_CWORD; i++)); do
        case "${{COMP_WORDS[i]}}" in
            -c|--config) ((i++)) ;;
            -*) ;;
            *) cmd="${{COMP_WORDS[i]}}"; break ;;
        esac
    done
    if [[ -z "$cmd" ]]; then
        COMPREPLY=($(compgen -W "{top}" -- "$cur"))
        return
    fi
    case "$cmd" in
{chr(10).join(cases)}
        *) return ;;
    esac
    if [[ "$cur" == -* ]]; then
        COMPREPLY=($(compgen -W "$opts" -- "$cur"))
    else
        positional
    fi
}}
complete -F _cairnd cairnd
"""


def zsh_script(parser: argparse.ArgumentParser) -> str:
    # zsh runs bash completion functions through bashcompinit: one script to keep right.
    return ("# zsh completion for cairnd: source <(cairnd completion zsh)\n"
            "(( $+functions[compdef] )) || { autoload -U +X compinit && compinit; }\n"
            "autoload -U +X bashcompinit && bashcompinit\n"
            + bash_script(parser).split("\n", 1)[1])


def completion_script(shell: str, parser: argparse.ArgumentParser) -> str:
    return bash_script(parser) if shell == "bash" else zsh_script(parser)
