"""Shell completion scripts for bash, zsh and fish, generated from the argparse parser so
they never drift from the commands: `source <(cairnd completion bash)`.

SESSION arguments complete to the ids `cairnd ls -q` prints, asked of the same program
with the same `-c/--config` as the line being completed."""

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
            positional = 'COMPREPLY=($(compgen -W "$("${COMP_WORDS[0]}" "${cfg[@]}" ls -q 2>/dev/null)" -- "$cur"))'
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
    local cur prev cmd i opts cfg=()
    cur="${{COMP_WORDS[COMP_CWORD]}}"
    prev="${{COMP_WORDS[COMP_CWORD-1]}}"
    case "$prev" in
        {file_options}) COMPREPLY=($(compgen -f -- "$cur")); return ;;
    esac
    cmd=""
    for ((i = 1; i < COMP_CWORD; i++)); do
        case "${{COMP_WORDS[i]}}" in
            -c|--config) ((i++)); cfg=(-c "${{COMP_WORDS[i]}}") ;;
            --config=*) cfg=("${{COMP_WORDS[i]}}") ;;
            -*) ;;
            *) [[ -z "$cmd" ]] && cmd="${{COMP_WORDS[i]}}" ;;
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


def _fish_quote(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def fish_script(parser: argparse.ArgumentParser) -> str:
    commands = _subcommands(parser)
    lines = [
        "# fish completion for cairnd: cairnd completion fish | source",
        "# (or save it as ~/.config/fish/completions/cairnd.fish)",
        "function __cairnd_words --description 'the words before the cursor: the command, then -c FILE if given'",
        "    set -l words (commandline -opc)",
        "    set -l cfg",
        "    set -l cmd",
        "    set -l i 2",
        "    while test $i -le (count $words)",
        "        switch $words[$i]",
        "            case -c --config",
        "                set i (math $i + 1)",
        "                set cfg -c $words[$i]",
        "            case '--config=*'",
        "                set cfg $words[$i]",
        "            case '-*'",
        "            case '*'",
        "                test -z \"$cmd\"; and set cmd $words[$i]",
        "        end",
        "        set i (math $i + 1)",
        "    end",
        "    printf '%s\\n' \"$cmd\" $cfg",
        "end",
        "function __cairnd_command",
        "    set -l found (__cairnd_words)",
        "    test -n \"$found[1]\"; and contains -- $found[1] $argv",
        "end",
        "function __cairnd_no_command",
        "    set -l found (__cairnd_words)",
        "    test -z \"$found[1]\"",
        "end",
        "function __cairnd_sessions",
        "    set -l found (__cairnd_words)",
        "    set -e found[1]",
        "    set -l program (commandline -opc)[1]",
        "    $program $found ls -q 2>/dev/null",
        "end",
        "complete -c cairnd -f",
        "complete -c cairnd -s c -l config -r -F -d 'configuration file'",
        "complete -c cairnd -l json -d 'print JSON'",
    ]
    for name, sub in commands.items():
        lines.append(f"complete -c cairnd -n __cairnd_no_command -a {name} -d {_fish_quote(sub.description or '')}")
    for name, sub in commands.items():
        when = f"'__cairnd_command {name}'"
        for action in sub._actions:
            if not action.option_strings or "--help" in action.option_strings:
                continue
            spec = "".join(f" -s {o[1:]}" if len(o) == 2 else f" -l {o[2:]}" for o in action.option_strings)
            takes = "" if action.nargs == 0 else " -r"
            if any(o in _FILE_OPTIONS for o in action.option_strings):
                takes += " -F"
            help_text = _fish_quote((action.help or "").split("\n")[0].replace("%", "%%")) if action.help else "''"
            lines.append(f"complete -c cairnd -n {when}{spec}{takes} -d {help_text}")
        if name in _SESSION_COMMANDS:
            lines.append(f"complete -c cairnd -n {when} -a '(__cairnd_sessions)'")
        elif name == "new":
            lines.append(f"complete -c cairnd -n {when} -a '(__fish_complete_directories)'")
        elif _choices(sub):
            lines.append(f"complete -c cairnd -n {when} -a {_fish_quote(' '.join(_choices(sub)))}")
    return "\n".join(lines) + "\n"


def completion_script(shell: str, parser: argparse.ArgumentParser) -> str:
    return {"bash": bash_script, "zsh": zsh_script, "fish": fish_script}[shell](parser)
