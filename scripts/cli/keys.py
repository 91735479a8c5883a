"""`dctrl keys add|list|rotate|revoke`: identities, their key versions and the registry."""

from __future__ import annotations

import argparse
import json
import time

from proto.errors import DctrlError
from scripts.cli.common import JSON_HELP, command, printable
from scripts.cli.common import home as _home


def cmd_keys(args):
    from keys.identity import IdentityKeys
    from keys.registry import Registry

    home = _home(args)
    registry = Registry.load(home.registry_path)
    if args.keys_cmd == "add":
        keys = IdentityKeys.generate(args.name)
        if home.key_file(args.name).exists():
            raise DctrlError(f"{home.key_file(args.name)} exists; use `dctrl keys rotate {args.name}`")
        registry.add(keys, args.role)
        keys.save(home.key_file(args.name))
        registry.save()
        print(f"added {args.name} ({args.role}), key v1, curve public {keys.curve_public.decode()}")
        print(f"secret key file: {home.key_file(args.name)} (0600)")
    elif args.keys_cmd == "list":
        now = time.time()
        rows = []
        for name in registry.names():
            for k in sorted(registry.keys_of(name), key=lambda k: -k.version):
                if k.version <= registry.revoked_up_to(name):
                    state = "revoked"
                elif k.not_after is None:
                    state = "current"
                elif k.not_after > now:
                    state = "grace"
                else:
                    state = "expired"
                rows.append({"name": name, "role": k.role, "version": k.version, "state": state,
                             "not_after": k.not_after, "created": k.created, "curve_public": k.curve.decode(),
                             "sign_public": k.sign.hex()})
        if args.json:
            print(json.dumps(rows, sort_keys=True))
            return
        print(f"{'NAME':<14} {'ROLE':<8} {'VERSION':>7} {'STATE':<22} CURVE PUBLIC KEY")
        for r in rows:
            state = f"grace, {int(r['not_after'] - now)} s left" if r["state"] == "grace" else r["state"]
            print(f"{printable(r['name']):<14} {printable(r['role']):<8} {r['version']:>7} {state:<22} "
                  f"{r['curve_public']}")
    elif args.keys_cmd == "rotate":
        grace = args.grace if args.grace is not None else home.config["vault"]["key_grace"]
        if args.name == "broker" and not args.offline:
            raise DctrlError(BROKER_ROTATION.format(home=home.root))
        new = registry.rotate(args.name, 0 if args.name == "broker" else grace)
        new.save(home.key_file(args.name))
        registry.save()
        if args.name == "broker":  # every client pins the broker's Curve key: the machines' configs too
            pinned = _repin_broker(home, new.curve_public.decode())
            print(f"rotated broker to key v{new.version}; its old key ended now")
            for path in pinned:
                print(f"  updated broker_public_key in {path}")
            print("copy each machine's agent.toml (or just its new broker_public_key) to the machine, "
                  "then start the network and the agents again")
            return
        print(f"rotated {args.name} to key v{new.version}; older keys stay valid for {grace} s")
        if registry.role(args.name) == "machine":
            _rotated_machine_key(home, args.name)
    elif args.keys_cmd == "revoke":
        upto = registry.revoke(args.name)
        registry.save()
        print(f"revoked {args.name} (key versions up to {upto}); the broker cuts it off within seconds")
        print(f"to re-admit it later: dctrl keys rotate {args.name}")


BROKER_ROTATION = """refusing to rotate the broker's key while the network may run.
Every client pins the broker's public key (the machines in their agent.toml), and the
broker loads its key only at start: a rotation under a running network cuts every new
connection. The procedure:
  1. stop the network (Ctrl-C `dctrl up`, or `supervisorctl stop all`) and every agent
  2. dctrl keys rotate broker --offline --home {home}
     (rotates, ends the old key now, and rewrites broker_public_key in every agent.toml
     under {home}/agents)
  3. give each machine its new broker_public_key (copy its agent.toml, or
     `dctrl agent-config NAME --out DIR` and copy it), then start the network and the agents"""


def _rotated_machine_key(home, name):
    """Say where a machine's new key goes; a machine whose folder is in the home (the demo's
    simulated vm1 in agents/vm1/) gets it there at once (its agent reloads it)."""
    from keys.files import atomic_write

    local = home.root / "agents" / name / f"{name}.key"
    if local.exists():
        atomic_write(local, home.key_file(name).read_bytes(), mode=0o600)
        print(f"copied the new key to {local}: the agent there reloads it")
    else:
        print(f"copy {home.key_file(name)} to the machine as {name}.key, beside its agent.toml "
              f"(key_file); its agent reloads it")


def _repin_broker(home, curve_public: str) -> list:
    """Rewrite ``broker_public_key`` in the agent configs kept in the home (the demo's)."""
    import re

    from keys.files import atomic_write

    changed = []
    for path in sorted((home.root / "agents").glob("*/agent.toml")):
        text = path.read_text()
        new = re.sub(r'(?m)^broker_public_key\s*=\s*"[^"]*"', f'broker_public_key = "{curve_public}"', text)
        if new != text:
            atomic_write(path, new.encode(), mode=path.stat().st_mode & 0o777)
            changed.append(path)
    return changed


def _grace_seconds(value):
    """--grace: 0 or more seconds (a negative grace would cut the running process off at once)."""
    if int(value) < 0:
        raise argparse.ArgumentTypeError(f"the grace must be 0 or more seconds, not {value}")
    return int(value)


def register(sub):
    sp = command(sub, "keys", cmd_keys, "manage identities and their keys")
    ks = sp.add_subparsers(dest="keys_cmd", required=True, metavar="ACTION")
    k = ks.add_parser("add", help="new identity with Curve and Ed25519 keys")
    k.add_argument("name", help="the identity (letters, digits, _ and -)")
    k.add_argument("--role", required=True, choices=("actor", "machine", "admin"),
                   help="its grants in policy.toml: [role.ROLE]")
    k = ks.add_parser("list", help="identities, key versions and their state")
    k.add_argument("--json", action="store_true", help=JSON_HELP)
    k = ks.add_parser("rotate", help="new keys valid at once; old keys accepted for a grace period")
    k.add_argument("name", help="the identity")
    k.add_argument("--grace", type=_grace_seconds, help="seconds the old keys stay valid (default [vault] key_grace)")
    k.add_argument("--offline", action="store_true",
                   help="the broker only, with the network stopped: rotate and re-pin the home's agents")
    k = ks.add_parser("revoke", help="refuse every key of NAME; connected peers are cut off")
    k.add_argument("name", help="the identity")
    for k in ks.choices.values():
        k.add_argument("--home", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
