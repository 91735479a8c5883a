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

from .bus import BusSettings, next_boot  # noqa: F401  (re-exported: Home.bus_settings, the broker)
from .files import read_secret_file
from .schema import CONFIG, check

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
    # stored, the rest counted in a summary record; valid messages: at most quota_mb per sender
    # per quota_period_s stored, the rest counted the same way (0: no quota)
    # (actors/event_logger/actor.py)
    "event_logger": {"segment_mb": 16, "fsync_interval_ms": 50, "retention_days": 90, "max_mb": 2048,
                     "rejected_sample": 100, "rejected_period_s": 60, "quota_mb": 64, "quota_period_s": 3600},
    "database": {"url": ""},
    # the report server (actors/server/): listen HOST:PORT, waitress worker threads, the longest
    # page of a listing; [spaceapi] holds its SpaceAPI's static fields (actors/server/spaceapi.py)
    "server": {"listen": "127.0.0.1:8080", "threads": 16, "page_max": 500},
    "spaceapi": {},
    # MemberData's dues in bitcoin (actors/member_data/actor.py): receive is the account xpub (or a
    # wpkh(...) descriptor) dues addresses are derived from, never the same as [business] receive;
    # a payment is valued at a price.btc_cad at most price_max_age seconds old
    "members": {"receive": "", "gap_limit": 20, "price_max_age": 60, "watch_retry": 2.0},
    # PayoutMgr's treasury (actors/payout_mgr/): a k-of-n wsh(sortedmulti(...)) descriptor, watch-only
    # ("": no treasury, payout_mgr runs and does nothing); change_descriptor when the descriptor is
    # the receive branch alone (/0/*); gap_limit unused addresses watched beyond the last used one
    # on each branch; name: the wallet's name in the exports; lookahead: when [business] or
    # [members] receive is the treasury's descriptor, a payment to a receive address up to this many
    # beyond the watched run is recognised and the run extended to it (at most 1000)
    "treasury": {"descriptor": "", "change_descriptor": "", "gap_limit": 20, "name": "dctrl treasury",
                 "watch_retry": 2.0, "lookahead": 200},
    # actors/reporter/actor.py: judge and snapshot daily at `at` (local time, HH:MM) and every
    # `interval` s; a feed is down when ChainNotifier says so, lags more than `max_lag` blocks, or
    # is silent `chain_timeout` s, or the price is stale or silent `price_timeout` s
    "reporter": {"at": "00:05", "interval": 3600, "max_lag": 2, "chain_timeout": 60, "price_timeout": 600},
    "demo": {"simulators": False, "exchanges_port": 7480, "chain_rpc_port": 18443, "chain_zmq_port": 28332,
             "smtp_port": 2525},  # the demo's mail sink (`dctrl sim smtp`), [member_mail] points at it
}



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
    server_tokens_path = property(lambda self: self.root / "server_tokens.json")  # hashed (actors/server/tokens.py)

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


__all__ = ["Home", "BusSettings", "next_boot", "default_home"]
