"""``agent.toml``: everything a vending machine needs to join the bus, and nothing more.

Made on the server with ``dctrl agent-config NAME --out DIR`` (which also copies
the machine's 0600 key file) and copied to the machine::

    name = "vm1"
    key_file = "vm1.key"          # relative paths are relative to this file
    state_dir = "state"           # boot counter and command journal

    [bus]
    publish_endpoint = "tcp://10.0.0.2:7401"
    subscribe_endpoint = "tcp://10.0.0.2:7402"
    broker_public_key = "<z85>"

    [vault]
    token_public_key = "<hex>"    # pinned: tokens signed by any other key are refused
"""

from __future__ import annotations

import tomllib
from pathlib import Path

import nacl.signing

from keys.home import BusSettings
from proto.errors import ConfigError
from proto.wire import check_name

TEMPLATE = """\
# dctrl-agent configuration for machine {name}; made by `dctrl agent-config`.
name = "{name}"
key_file = "{name}.key"
state_dir = "state"

[bus]
publish_endpoint = "{pub}"
subscribe_endpoint = "{sub}"
broker_public_key = "{broker}"

[vault]
token_public_key = "{vault}"
"""


def load(path) -> BusSettings:
    path = Path(path).absolute()
    try:
        with open(path, "rb") as f:
            cfg = tomllib.load(f)
        name = check_name(cfg["name"])
        base = path.parent
        state = base / cfg.get("state_dir", "state")
        state.mkdir(mode=0o700, exist_ok=True)
        bus, vault = cfg["bus"], cfg["vault"]
        return BusSettings(
            name=name,
            key_file=base / cfg.get("key_file", f"{name}.key"),
            boot_file=state / "boot",
            publish_endpoint=bus["publish_endpoint"],
            subscribe_endpoint=bus["subscribe_endpoint"],
            broker_public=bus["broker_public_key"].encode(),
            vault_public=nacl.signing.VerifyKey(bytes.fromhex(vault["token_public_key"])),
            heartbeat_interval=int(cfg.get("heartbeat_interval", 5)),
            journal_file=state / "replay.json",
        )
    except FileNotFoundError:
        raise ConfigError(f"no agent config at {path}: make one with `dctrl agent-config NAME` on the server") from None
    except (KeyError, ValueError, TypeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: {type(exc).__name__}: {exc}") from None


def render(home, name) -> str:
    from keys.registry import Registry

    registry = Registry.load(home.registry_path)
    if registry.role(name) != "machine":
        raise ConfigError(f"{name} is not a machine identity (role {registry.role(name)})")
    bus = home.config["bus"]
    return TEMPLATE.format(name=name, pub=bus["publish_endpoint"], sub=bus["subscribe_endpoint"],
                           broker=registry.current("broker").curve.decode(),
                           vault=bytes(home.vault_public).hex())
