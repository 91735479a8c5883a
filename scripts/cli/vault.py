"""`dctrl vault set-secret|list|rekey`: the Vault's encrypted secrets, on the home's files."""

from __future__ import annotations

import argparse
import json
import sys

from proto.errors import DctrlError
from scripts.cli.common import JSON_HELP, command
from scripts.cli.common import home as _home


def cmd_vault(args):
    from actors.vault import open_store, rekey

    home = _home(args)
    if args.vault_cmd == "rekey":
        if args.to == "passphrase":
            phrase = _read_value("new passphrase").decode()
            if len(phrase) < 12:
                raise DctrlError("passphrase refused: use at least 12 characters")
        store = rekey(home, passphrase=phrase if args.to == "passphrase" else None)
        print(f"re-encrypted {len(store.names())} secrets under a new "
              f"{'passphrase (Argon2id)' if args.to == 'passphrase' else 'key file'}; restart the vault"
              + (" with $DCTRL_VAULT_PASSPHRASE or [vault] passphrase_file set" if args.to == "passphrase" else ""))
        return
    store = open_store(home)
    if args.vault_cmd == "set-secret":
        value = _read_value(f"value of {args.name}")
        if not value:
            raise DctrlError("empty secret refused")
        store.set(args.name, value)
        print(f"stored secret {args.name} ({len(value)} bytes); readers come from [secrets] in policy.toml")
    elif args.vault_cmd == "list":
        names = sorted(store.names())
        if args.json:
            print(json.dumps(names))
            return
        for name in names:
            print(name)


def _read_value(prompt) -> bytes:
    """A secret from stdin (piped) or a no-echo prompt; never from the command line."""
    if not sys.stdin.isatty():
        return sys.stdin.buffer.read().rstrip(b"\n")
    import getpass

    return getpass.getpass(f"{prompt}: ").encode()


def register(sub):
    sp = command(sub, "vault", cmd_vault, "the Vault's encrypted secrets")
    vs = sp.add_subparsers(dest="vault_cmd", required=True, metavar="ACTION")
    v = vs.add_parser("set-secret", help="store a secret (value from stdin or a prompt)")
    v.add_argument("name", help="the secret's name, as policy.toml's [secrets] names it")
    v = vs.add_parser("list", help="secret names")
    v.add_argument("--json", action="store_true", help=JSON_HELP)
    v = vs.add_parser("rekey", help="re-encrypt the secrets under an Argon2id passphrase or a new key file")
    v.add_argument("--to", choices=("passphrase", "key-file"), required=True,
                   help="passphrase: read from stdin or a prompt; the vault then needs $DCTRL_VAULT_PASSPHRASE "
                        "or [vault] passphrase_file")
    for v in vs.choices.values():
        v.add_argument("--home", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
