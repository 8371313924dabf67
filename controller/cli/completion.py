"""Shell completion: `modctl completion bash|zsh` prints a script; the script calls back
`modctl __complete KIND... [--db PATH]` for the values that live in files (docs/cli.md).

The script holds the command tree (commands, options, which option takes what), generated
from the parser when it is printed, so completing a command or an option runs no Python.
Profile ids, plan presets, device names, booking ids, session ids and user names are read at
the moment of completion, from the installed profiles and the records database; the call back
prints nothing else and never fails (a missing or locked database completes nothing).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import sys
from collections.abc import Iterator, Sequence
from importlib import resources
from pathlib import Path

from controller.cli.common import EXIT_OK

SHELLS = ("bash", "zsh")
# The kinds of value the call back knows; a spec word "@KIND" in the script asks for them.
KINDS = ("profiles", "plans", "devices", "bookings", "sessions", "users")
# Kinds the shell completes itself: file names, and nothing (free text such as a duration).
FILES, NOTHING = "@files", "@none"
# Metavars whose value is a file or device path.
PATH_METAVARS = frozenset({"PATH", "FILE", "PEM", "DIR", "PORT"})
# How many recent sessions `records show/note/report <TAB>` offers.
RECENT_SESSIONS = 50
# As controller.plans.plan (not imported: it brings pydantic).
PRESET_PACKAGE, PRESET_DIR = "controller.plans", "presets"


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "completion", help="print a shell completion script (bash or zsh)",
        description="Print a completion script for bash or zsh: commands, options, profile "
                    "ids, plan presets, device names, booking and session ids. Install it "
                    "once (regenerate it after upgrading modctl).",
        epilog="bash: modctl completion bash > ~/.local/share/bash-completion/completions/"
               "modctl\nzsh:  modctl completion zsh > \"${fpath[1]}/_modctl\" (or eval "
               "\"$(modctl completion zsh)\" in ~/.zshrc)",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("shell", choices=SHELLS, help="the shell to print the script for")
    p.set_defaults(run=_run)


def _run(args: argparse.Namespace) -> int:
    print(script(args.shell), end="")
    return EXIT_OK


# -- the command tree, as the script's specs -----------------------------------------------------

def value_spec(path: tuple[str, ...], action: argparse.Action) -> str:
    """What completes the value of an option or positional at command `path`: its choices,
    '@KIND' words for the call back, FILES or NOTHING."""
    if action.choices is not None and not isinstance(action, argparse._SubParsersAction):
        return " ".join(str(c) for c in action.choices)
    metavar = str(action.metavar or action.dest.upper())
    dest, group = action.dest, path[:1]
    if metavar == "PROFILE|DEVICE":
        return "history @devices @profiles"
    if metavar == "PROFILE" or dest == "profile":
        return "@profiles"
    if metavar == "PLAN" or dest in ("plan", "plans"):
        return "@plans"
    if group == ("book",) and dest == "booking_id":
        return "@bookings"
    if (dest in ("devices", "device", "history_device") and group != ("plan",)) or \
            (group == ("devices",) and dest == "name" and path[1:] != ("add",)):
        return "@devices"
    if group == ("records",) and dest == "session_id":
        return "@sessions"
    if group == ("users",) and dest == "name" and path[1:] != ("add",):
        return "@users"
    if metavar in PATH_METAVARS or dest in ("files", "out", "readings"):
        return FILES
    return NOTHING


def specs(parser: argparse.ArgumentParser,
          path: tuple[str, ...] = ()) -> Iterator[tuple[str, str]]:
    """("PATH|KEY", spec) for every command path: KEY `subs` (subcommands), `opts` (options),
    `val:OPTION` (what an option's value completes to), `pos:N` / `pos:*` (positionals)."""
    where = " ".join(path)
    options: list[str] = []
    position = 0
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            yield f"{where}|subs", " ".join(action.choices)
            for name, child in action.choices.items():
                yield from specs(child, (*path, name))
        elif action.option_strings:
            options += action.option_strings
            if action.nargs != 0:
                for option in action.option_strings:
                    yield f"{where}|val:{option}", value_spec(path, action)
        else:
            spec = value_spec(path, action)
            if action.nargs in ("+", "*"):
                yield f"{where}|pos:{position}", spec
                yield f"{where}|pos:*", spec
            else:
                yield f"{where}|pos:{position}", spec
            position += 1
    yield f"{where}|opts", " ".join(options)


BASH_BODY = r'''
_modctl() {
    local cur=${COMP_WORDS[COMP_CWORD]} prev= path= npos=0 i w spec= db=
    COMPREPLY=()
    for ((i = 1; i < COMP_CWORD; i++)); do
        w=${COMP_WORDS[i]}
        if [[ $w == -* ]]; then
            [[ $w == --db ]] && db=${COMP_WORDS[i+1]}
            [[ -n $(_modctl_spec "$path|val:$w") ]] && ((i++))
        elif [[ " $(_modctl_spec "$path|subs") " == *" $w "* ]]; then
            path=${path:+$path }$w
            npos=0
        else
            ((npos++))
        fi
    done
    ((COMP_CWORD > 1)) && prev=${COMP_WORDS[COMP_CWORD-1]}
    if [[ $prev == -* ]] && spec=$(_modctl_spec "$path|val:$prev") && [[ -n $spec ]]; then
        :
    elif [[ $cur == -* ]]; then
        spec=$(_modctl_spec "$path|opts")
    else
        spec=$(_modctl_spec "$path|subs")
        [[ -z $spec ]] && spec=$(_modctl_spec "$path|pos:$npos")
        [[ -z $spec ]] && spec=$(_modctl_spec "$path|pos:*")
    fi
    local word words= kinds=()
    for word in $spec; do
        case $word in
            @files) COMPREPLY=($(compgen -f -- "$cur"))
                    compopt -o filenames 2>/dev/null
                    return 0;;
            @none) ;;
            @*) kinds+=("${word#@}");;
            *) words+=$'\n'$word;;
        esac
    done
    if ((${#kinds[@]})); then
        words+=$'\n'"$("${COMP_WORDS[0]}" __complete "${kinds[@]}" ${db:+--db "$db"} 2>/dev/null)"
    fi
    local IFS=$'\n'
    COMPREPLY=($(compgen -W "$words" -- "$cur"))
}
complete -F _modctl modctl
'''


def script(shell: str) -> str:
    """The completion script for `shell` (bash, or zsh through its bash emulation)."""
    from controller.cli.main import build_parser
    cases = "\n".join(f"        {shlex.quote(key)}) echo {shlex.quote(spec)};;"
                      for key, spec in specs(build_parser()) if spec)
    head = ("# modctl completion for bash, generated by `modctl completion bash`.\n"
            if shell == "bash" else
            "#compdef modctl\n# modctl completion for zsh (bash emulation), generated by "
            "`modctl completion zsh`.\nautoload -U +X compinit && compinit -C\n"
            "autoload -U +X bashcompinit && bashcompinit\n")
    return (f"{head}_modctl_spec() {{\n    case \"$1\" in\n{cases}\n    esac\n}}\n"
            + BASH_BODY.lstrip("\n"))


# -- the call back: `modctl __complete KIND... [--db PATH]` ---------------------------------------

def complete_main(words: Sequence[str]) -> int:
    """Print the values of each KIND, one a line; nothing at all on any error."""
    kinds, db = _parse(words)
    with open(os.devnull, "w") as devnull, contextlib.redirect_stderr(devnull):
        try:
            for value in dict.fromkeys(values(kinds, db)):
                print(value)
        except Exception:  # a completion must never show an error
            pass
    return EXIT_OK


def _parse(words: Sequence[str]) -> tuple[list[str], str | None]:
    kinds: list[str] = []
    db: str | None = None
    rest = list(words)
    while rest:
        word = rest.pop(0)
        if word == "--db":
            db = rest.pop(0) if rest else None
        elif word in KINDS:
            kinds.append(word)
    return kinds, db


def values(kinds: Sequence[str], db: str | None) -> Iterator[str]:
    """The completion values of `kinds`, in that order."""
    for kind in kinds:
        if kind == "profiles":
            from controller.cli.profiles_cmd import shipped_profile_paths
            yield from shipped_profile_paths()
        elif kind == "plans":
            root = resources.files(PRESET_PACKAGE) / PRESET_DIR
            yield from sorted(e.name.removesuffix(".yaml") for e in root.iterdir()
                              if e.name.endswith(".yaml"))
        else:
            yield from _records_values(kind, db)


def _records_values(kind: str, db: str | None) -> Iterator[str]:
    """Names and ids from the records database; nothing when there is none (never create)."""
    from controller.records.store import RecordStore, default_db_path
    path = default_db_path(db)
    if "://" not in str(path) and not Path(path).exists():
        return
    with RecordStore(path, create=False) as store:
        if kind == "devices":
            found = [d.name for d in store.devices()]
        elif kind == "bookings":
            found = [str(b.id) for b in store.bookings(None, statuses=("booked",))]
        elif kind == "sessions":
            found = [s.id for s in store.list_sessions(RECENT_SESSIONS)]
        else:
            found = [u.name for u in store.users()]
    yield from found


if __name__ == "__main__":  # pragma: no cover
    sys.exit(complete_main(sys.argv[1:]))
