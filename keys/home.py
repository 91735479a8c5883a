"""The dctrl home directory (``$DCTRL_HOME``, else ``./var``) and its config.

Layout::

    HOME/config.toml        bus endpoints and tunables (embedded defaults below)
    HOME/policy.toml        grants (keys.policy)
    HOME/keys/registry.json public keys of every identity (keys.registry)
    HOME/keys/NAME.key      an identity's secret keys, 0600
    HOME/vault/             token signing key, secret store and its key, 0700
    HOME/events/            the event log (segments)
    HOME/run/NAME.boot      per-identity boot counter (only grows)
    HOME/log/               supervisord and actor logs
    HOME/dctrl.sqlite3      the embedded database
"""

from __future__ import annotations

import copy
import os
import tomllib
from pathlib import Path

import nacl.signing

from proto.errors import ConfigError

from .bus import BusSettings, next_boot  # noqa: F401  (next_boot re-exported for broker/broker.py)
from .files import atomic_write, current_umask, read_secret_file, write_json
from .identity import IdentityKeys
from .schema import CONFIG, check

SERVER_ACTORS = ("broker", "vault", "event_logger")  # the bus itself
SUPERVISED_ACTORS = SERVER_ACTORS + ("price_notifier", "chain_notifier", "business_data", "business_mgr")  # run by `dctrl up`, expected by `dctrl status`
ACTOR_IDENTITIES = SERVER_ACTORS + ("chain_notifier", "price_notifier", "business_mgr", "business_data")
DEMO_MACHINE = "vm1"
ADMIN = "admin"

# Every key here and in the actors' DEFAULTS has its type in keys/schema.py: anything else in
# config.toml is refused at load (tests/test_config.py keeps the two in step).
DEFAULTS = {
    "bus": {
        # Actors' PUB sockets connect to the broker's XSUB, their SUB sockets to its XPUB.
        "publish_endpoint": "tcp://127.0.0.1:7401",
        "subscribe_endpoint": "tcp://127.0.0.1:7402",
        "max_message_bytes": 65536,
        "heartbeat_ivl_ms": 2000,
        "heartbeat_timeout_ms": 6000,
        "handshake_ivl_ms": 5000,
    },
    "broker": {"reload_interval": 1.0, "denied_events_per_second": 10,
               # per identity: distinct subscription prefixes held; messages per second and at once
               # (0: no limit); roles with no publish limit (none: an admin key is limited too;
               # `dctrl bench` lifts it for its own throwaway home)
               "max_subscriptions": 1000, "publish_rate": 2000, "publish_burst": 20000,
               "publish_unlimited_roles": []},
    "runtime": {"heartbeat_interval": 5},
    "vault": {"token_lifetime": 900, "key_grace": 86400, "revocations_interval": 30},
    # retention: segments older than retention_days or beyond max_mb are deleted (0: keep);
    # refused messages: the first rejected_sample per claimed sender per rejected_period_s are
    # stored, the rest counted in a summary record (actors/event_logger.py)
    "event_logger": {"segment_mb": 16, "fsync_interval_ms": 50, "retention_days": 90, "max_mb": 2048,
                     "rejected_sample": 100, "rejected_period_s": 60},
    "database": {"url": ""},
    "demo": {"simulators": False, "exchanges_port": 7480, "chain_rpc_port": 18443, "chain_zmq_port": 28332},
}

CONFIG_TEMPLATE = """\
# dctrl home configuration. Every key has an embedded default; see keys/home.py.

[bus]
publish_endpoint = "{pub}"    # broker XSUB: actors publish here
subscribe_endpoint = "{sub}"  # broker XPUB: actors subscribe here
# The broker binds the endpoints above; for vending machines on the LAN, have it listen
# on every interface (or one address) instead, keeping the endpoints' ports:
# listen = "0.0.0.0"

[vault]
token_lifetime = 900   # seconds a capability token lives (renewed at half-life)
key_grace = 86400      # seconds old keys stay valid after `dctrl keys rotate`
# The Vault's token-signing key, pinned by every process (also in machine agent configs).
token_public_key = "{token_pub}"

[database]
url = "{db_url}"

[demo]
# `dctrl up` also runs the exchange simulator, and the notifiers use it: dctrl runs
# anywhere with no internet. In production set simulators = false and point
# [price.sources] (and [chain]) at real services.
simulators = true
exchanges_port = {exchanges_port}
chain_rpc_port = {chain_rpc_port}
chain_zmq_port = {chain_zmq_port}

# The chain (actors/chain_notifier.py). Backends are tried in order. Production:
# network = "mainnet", [chain.bitcoind] rpc_url of your node with user = "..." and
# password_secret = "bitcoind_rpc_password" (kept in the Vault), zmq = its zmqpubsequence.
[chain]
network = "regtest"
backends = ["bitcoind"]
confirm_depth = 6

[chain.bitcoind]
rpc_url = "http://127.0.0.1:{chain_rpc_port}"
zmq = "tcp://127.0.0.1:{chain_zmq_port}"
cookie_file = "sim/chain/.cookie"

# Sales (actors/business_mgr.py). receive: the account xpub (or a wpkh(...) descriptor)
# invoice addresses are derived from; no private key ever comes here. The demo's is
# a random regtest account whose private key was thrown away at `dctrl init`.
[business]
receive = "{receive}"

# BTC-CAD price sources (actors/price_notifier.py; "" disables one). Production:
# kraken = "https://api.kraken.com", coinbase = "https://api.coinbase.com",
# bitstamp = "https://www.bitstamp.net", coingecko = "https://api.coingecko.com",
# fx = "https://www.bankofcanada.ca"
[price.sources]
kraken = "http://127.0.0.1:{exchanges_port}"
coinbase = "http://127.0.0.1:{exchanges_port}"
bitstamp = "http://127.0.0.1:{exchanges_port}"
coingecko = "http://127.0.0.1:{exchanges_port}"
fx = "http://127.0.0.1:{exchanges_port}"
"""

POLICY_TEMPLATE = """\
# Who may publish and subscribe what. Prefixes match whole dot-separated segments:
# "machine.{{self}}" grants machine.vm1 and machine.vm1.* to vm1, never machine.vm10.
# {{self}} is the identity's own name; "" grants everything. An identity's grants are
# [all] + [role.ROLE] + [identity.NAME]. The broker and the Vault reload this file live.

[all]
publish = ["health.{{self}}", "error.{{self}}", "vault.req.{{self}}"]
subscribe = ["vault.token.{{self}}", "vault.secret.{{self}}", "vault.revoked"]

[role.machine]
publish = ["machine.{{self}}"]
subscribe = ["cmd.machine.{{self}}"]

[role.admin]
publish = ["debug", "cmd.chain", "cmd.business"]
subscribe = [""]

[identity.broker]
publish = ["broker"]

[identity.vault]
publish = ["vault"]
subscribe = ["vault.req"]

[identity.event_logger]
publish = ["events"]
subscribe = [""]

[identity.chain_notifier]
publish = ["chain"]
subscribe = ["cmd.chain"]

[identity.price_notifier]
publish = ["price"]

[identity.business_data]
publish = ["business"]
subscribe = ["cmd.business"]

[identity.business_mgr]
publish = ["cmd.machine", "cmd.chain", "invoice"]
subscribe = ["machine", "chain", "price", "business"]

# secret name = identities that may read it from the Vault
[secrets]
"""


def default_home() -> Path:
    return Path(os.environ.get("DCTRL_HOME") or "var").absolute()


def merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


class Home:
    def __init__(self, root=None):
        self.root = Path(root).absolute() if root else default_home()
        path = self.root / "config.toml"
        try:
            with open(path, "rb") as f:
                self.config = merge(DEFAULTS, check(tomllib.load(f), CONFIG, path))
        except FileNotFoundError:
            raise ConfigError(f"{self.root} is not a dctrl home (no config.toml): run `dctrl init --home {self.root}`") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: {exc}") from None

    # paths
    keys_dir = property(lambda self: self.root / "keys")
    registry_path = property(lambda self: self.root / "keys" / "registry.json")
    policy_path = property(lambda self: self.root / "policy.toml")
    vault_dir = property(lambda self: self.root / "vault")
    events_dir = property(lambda self: self.root / "events")
    log_dir = property(lambda self: self.root / "log")
    run_dir = property(lambda self: self.root / "run")

    def key_file(self, name) -> Path:
        return self.keys_dir / f"{name}.key"

    def boot_file(self, name) -> Path:
        return self.run_dir / f"{name}.boot"

    @property
    def database_url(self) -> str:
        return self.config["database"]["url"] or f"sqlite:///{self.root / 'dctrl.sqlite3'}"

    @property
    def vault_public(self) -> nacl.signing.VerifyKey:
        hexkey = self.config["vault"].get("token_public_key")
        if not hexkey:
            raise ConfigError(f"{self.root}/config.toml has no [vault] token_public_key")
        return nacl.signing.VerifyKey(bytes.fromhex(hexkey))

    def vault_signing_key(self) -> nacl.signing.SigningKey:
        return nacl.signing.SigningKey(bytes.fromhex(read_secret_file(self.vault_dir / "token.key").decode().strip()))

    def bus_settings(self, name: str) -> BusSettings:
        from .registry import Registry

        bus = self.config["bus"]
        broker = Registry.load(self.registry_path).current("broker")
        return BusSettings(
            name=name,
            key_file=self.key_file(name),
            boot_file=self.boot_file(name),
            publish_endpoint=bus["publish_endpoint"],
            subscribe_endpoint=bus["subscribe_endpoint"],
            broker_public=broker.curve,
            vault_public=self.vault_public,
            max_message_bytes=bus["max_message_bytes"],
            heartbeat_ivl_ms=bus["heartbeat_ivl_ms"],
            heartbeat_timeout_ms=bus["heartbeat_timeout_ms"],
            heartbeat_interval=self.config["runtime"]["heartbeat_interval"],
        )

    @classmethod
    def init(cls, root, *, publish_endpoint=None, subscribe_endpoint=None, database_url=None,
             exchanges_port=7480, chain_rpc_port=18443, chain_zmq_port=28332) -> "Home":
        """Create a new home with keys for every server actor, ``admin`` and ``vm1``.

        Refuses to touch an existing home (its keys would be replaced).
        """
        from .registry import Registry

        root = Path(root).absolute()
        if (root / "config.toml").exists():
            raise ConfigError(f"{root} is already a dctrl home; remove it first to start over")
        # The home is private to its user: the root is 0700 whatever the umask; the rest is 0700
        # and 0600 under `dctrl`'s umask 077, which what the actors create later inherits too
        # (README "Operating"). The umask masks the modes given here (log, the registry).
        umask = current_umask()
        for sub, mode in (("", 0o700), ("keys", 0o700), ("vault", 0o700), ("events", 0o700),
                          ("run", 0o700), ("log", 0o755 & ~umask), ("agents", 0o700)):
            (root / sub).mkdir(mode=mode, parents=True, exist_ok=True)
            os.chmod(root / sub, mode)
        token_key = nacl.signing.SigningKey.generate()
        atomic_write(root / "vault" / "token.key", bytes(token_key).hex().encode() + b"\n", mode=0o600)
        db_url = database_url or f"sqlite:///{root / 'dctrl.sqlite3'}"
        atomic_write(root / "config.toml", CONFIG_TEMPLATE.format(
            pub=publish_endpoint or DEFAULTS["bus"]["publish_endpoint"],
            sub=subscribe_endpoint or DEFAULTS["bus"]["subscribe_endpoint"],
            token_pub=bytes(token_key.verify_key).hex(),
            db_url=db_url,
            exchanges_port=exchanges_port,
            chain_rpc_port=chain_rpc_port,
            chain_zmq_port=chain_zmq_port,
            receive=demo_account_xpub(),
        ).encode(), mode=0o600)
        atomic_write(root / "policy.toml", POLICY_TEMPLATE.format().encode(), mode=0o600)
        registry = Registry(root / "keys" / "registry.json")
        for name, role in [*((a, "actor") for a in ACTOR_IDENTITIES), (ADMIN, "admin"), (DEMO_MACHINE, "machine")]:
            keys = IdentityKeys.generate(name)
            keys.save(root / "keys" / f"{name}.key")
            registry.add(keys, role)
        registry.save()
        home = cls(root)
        from actors.secretstore import SecretStore, create_key_file

        create_key_file(home.vault_dir / "secrets.key")
        from machine_agent.config import write_folder  # the demo's simulated machine vm1

        write_folder(home, DEMO_MACHINE, root / "agents" / DEMO_MACHINE, demo=True)
        if home.database_url.startswith("sqlite"):  # create the embedded database file (WAL)
            from actors.db import connect

            connect(home.database_url).close()
            if (root / "dctrl.sqlite3").exists():  # SQLite gives its -wal and -shm files the same mode
                os.chmod(root / "dctrl.sqlite3", 0o600)
        SecretStore.create(home.vault_dir / "secrets.json",
                           key=_load_store_key(home.vault_dir / "secrets.key"))
        return home


def demo_account_xpub() -> str:
    """A BIP84 regtest account tpub from a random seed that is thrown away: payments to its
    addresses can never be spent, which is right for a demo and wrong for anything else."""
    from embit import bip32
    from embit.networks import NETWORKS

    net = NETWORKS["regtest"]
    root = bip32.HDKey.from_seed(os.urandom(32), version=net["xprv"])
    return root.derive("m/84h/1h/0h").to_public().to_string(version=net["xpub"])


def _load_store_key(path):
    from actors.secretstore import load_key_file

    return load_key_file(path)


__all__ = ["Home", "BusSettings", "next_boot", "default_home", "SERVER_ACTORS", "write_json"]
