"""`modctl users add | list | disable | passwd`: the clinic service's accounts.

Whoever can write the records database can manage its accounts; each change is audited with
the OS user who ran the command. Passwords are asked twice at the terminal (never echoed), or
read as one line from stdin with `--password-stdin` (for scripts).
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys
import warnings

from controller.cli.clinic_common import (
    Body,
    add_clinic_options,
    clinic_command,
    db_exists,
    open_store,
    refused,
)
from controller.cli.common import EXIT_OK, EXIT_USAGE, NotFound, UsageError, error
from controller.cli.table import print_table
from controller.clinic.roles import ROLES, RolesConfig
from controller.service.accounts import (
    PASSWORD_MIN,
    Account,
    AccountConflict,
    AccountError,
    Accounts,
    check_name,
    check_password,
)

STATUS = {False: "active", True: "disabled"}


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("users", help="accounts of the clinic service (modctl serve)",
                       description="Accounts that log in to the clinic service. Exit status: "
                                   "0 done, 1 records unusable, 2 usage error, 3 refused.")
    us = p.add_subparsers(dest="users_cmd", required=True, metavar="COMMAND")
    add = us.add_parser("add", help="add an account",
                        description=f"Add an account. The password (at least {PASSWORD_MIN} "
                                    "characters) is asked twice, or read from stdin.")
    add.add_argument("name", metavar="NAME", help="1-64 letters, digits, '.', '_' or '-'")
    add.add_argument("--role", required=True, choices=ROLES,
                     help="clinician: sessions and bookings; technician: devices and "
                          "calibration; admin: everything, and the accounts")
    _password_option(add)
    add_clinic_options(add, operator=False)
    add.set_defaults(run=_users_command(_add))
    ls = us.add_parser("list", help="every account, disabled ones included",
                       description="Every account: name, role, status, when it was added "
                                   "and last changed (UTC).")
    ls.add_argument("--json", action="store_true", help="print JSON instead of a table")
    add_clinic_options(ls, operator=False)
    ls.set_defaults(run=_users_command(_list))
    dis = us.add_parser("disable", help="disable an account (its logins end)",
                        description="Disable an account: it can no longer log in and its "
                                    "logins end. Accounts are never deleted and names never "
                                    "reused, since the audit trail names them.")
    dis.add_argument("name", metavar="NAME", help="the account to disable")
    add_clinic_options(dis, operator=False)
    dis.set_defaults(run=_users_command(_disable))
    pw = us.add_parser("passwd", help="set an account's password (its logins end)",
                       description="Set a new password for an enabled account; its logins "
                                   "end.")
    pw.add_argument("name", metavar="NAME", help="the account whose password to set")
    _password_option(pw)
    add_clinic_options(pw, operator=False)
    pw.set_defaults(run=_users_command(_passwd))


def _password_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--password-stdin", action="store_true",
                   help="read the password as one line from stdin instead of asking")


def _users_command(body: Body) -> Body:
    """Account refusals exit 3, wrong values 2 (and the clinic commands' other failures)."""
    def run(args: argparse.Namespace) -> int:
        try:
            return body(args)
        except AccountConflict as exc:
            return refused(str(exc))
        except AccountError as exc:
            error(str(exc))
            return EXIT_USAGE
    return clinic_command(run)


def _actor() -> str:
    """The OS user running the command ($USER, else the login name), as other commands."""
    return RolesConfig(None).resolve(None)


def _password(args: argparse.Namespace, name: str) -> str:
    """The new password: one line of stdin, or asked twice at the terminal."""
    if args.password_stdin:
        line = sys.stdin.readline() if sys.stdin is not None else ""
        line = line.removesuffix("\n").removesuffix("\r")
        if not line:
            raise UsageError("--password-stdin: no password on stdin (give it as one line)")
        return check_password(line)
    try:
        with warnings.catch_warnings():
            # No terminal to switch echo off: refuse rather than show the password as typed.
            warnings.simplefilter("error", getpass.GetPassWarning)
            first = check_password(getpass.getpass(f"New password for {name}: "))
            second = getpass.getpass(f"New password for {name} (again): ")
    except (EOFError, getpass.GetPassWarning):
        raise UsageError("no terminal to ask for the password without echo; use "
                         "--password-stdin") from None
    if first != second:
        raise UsageError("password: the two entries differ; nothing was changed")
    return first


def _add(args: argparse.Namespace) -> int:
    actor = _actor()
    with open_store(args) as store:
        accounts = Accounts(store)
        accounts.check_new(args.name, args.role)  # before asking for a password
        account = accounts.add(args.name, args.role, _password(args, args.name), actor)
    print(f"added {account.name} ({account.role})")
    return EXIT_OK


def _list(args: argparse.Namespace) -> int:
    if db_exists(args):
        with open_store(args, create=False) as store:
            accounts = Accounts(store).list()
    else:
        accounts = []
    if args.json:
        print(json.dumps([_json(a) for a in accounts], indent=2))
        return EXIT_OK
    if not accounts:
        print("no accounts (add the first admin: modctl users add NAME --role admin)")
        return EXIT_OK
    print_table(("NAME", "ROLE", "STATUS", "CREATED (UTC)", "LAST CHANGE (UTC)"),
                [(a.name, a.role, STATUS[a.disabled], _when(a.created), _when(a.changed))
                 for a in accounts])
    return EXIT_OK


def _require(accounts: Accounts, name: str) -> None:
    """NotFound (exit 1, as every unknown name) unless the account exists."""
    if accounts.get(name) is None:
        raise NotFound(f"user '{name}' does not exist (see modctl users list)")


def _disable(args: argparse.Namespace) -> int:
    check_name(args.name)
    actor = _actor()
    with open_store(args, create=False) as store:
        _require(Accounts(store), args.name)
        account = Accounts(store).disable(args.name, actor)
    print(f"disabled {account.name}; its logins to the service end at their next request")
    return EXIT_OK


def _passwd(args: argparse.Namespace) -> int:
    actor = _actor()
    with open_store(args, create=False) as store:
        accounts = Accounts(store)
        check_name(args.name)
        _require(accounts, args.name)
        account = accounts.check_changeable(args.name)  # before asking for a password
        accounts.set_password(account.name, _password(args, account.name), actor)
    print(f"password of {account.name} changed; its logins to the service end")
    return EXIT_OK


def _when(iso: str) -> str:
    return iso[:16].replace("T", " ")


def _json(account: Account) -> dict[str, object]:
    return {"name": account.name, "role": account.role, "status": STATUS[account.disabled],
            "disabled": account.disabled, "created": account.created,
            "changed": account.changed}
