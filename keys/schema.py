"""What ``config.toml``, ``policy.toml`` and ``agent.toml`` may hold: every key and its type.

A typo (``ulr`` for ``url``) or a wrong type (``confirm_depth = "six"``) is a
:class:`~proto.errors.ConfigError` naming the file, the table and the key, at
load time, instead of a default silently used in its place::

    check(tomllib.load(f), CONFIG, path)
    # ConfigError: /srv/dctrl/config.toml: [chain] unknown key 'confirm_dpeth' (did you mean 'confirm_depth'?)

The tables of config.toml mirror the ``DEFAULTS`` of keys/home.py and of each
actor (business_mgr, chain_notifier, price_notifier); tests/test_config.py
checks that every default has its entry here, so a new setting must be added
to both. Tables whose keys are names chosen by the operator (chain backends,
policy identities and secrets, agent slots) are :class:`Table` ``patterns``.
This module imports nothing heavy: the machine agent uses it too.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Callable

from proto.errors import ConfigError


@dataclass(frozen=True)
class Kind:
    """A leaf value: ``what`` it must be (for the message) and the test."""

    what: str
    ok: Callable[[object], bool]


@dataclass(frozen=True)
class Table:
    """A TOML table: its known keys, and patterns for keys the operator names."""

    keys: dict = field(default_factory=dict)  # key -> Kind | Table
    patterns: tuple = ()                      # (predicate on the key, its label, Kind | Table); a label
    #                                           "bitcoind*" is a prefix (and a guess for a typo), "<slot>" a name
    checked_elsewhere: bool = False           # its contents are validated by its loader


def _is_int(v):
    return type(v) is int


INT = Kind("an integer", _is_int)
NUMBER = Kind("a number", lambda v: type(v) in (int, float))
STR = Kind("a string", lambda v: isinstance(v, str))
BOOL = Kind("true or false", lambda v: isinstance(v, bool))
STR_LIST = Kind("a list of strings", lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v))
MEMBER_STATUSES = Kind("a non-empty list of member statuses (prepaid, current, due, overdue, lapsed, left)",
                       lambda v: isinstance(v, list) and bool(v) and all(
                           x in ("prepaid", "current", "due", "overdue", "lapsed", "left") for x in v))
DECIMAL = Kind("an integer or a decimal string", lambda v: type(v) is int or isinstance(v, str))
NETWORKS = ("mainnet", "testnet", "signet", "regtest")
NETWORK = Kind(" or ".join(repr(n) for n in NETWORKS), lambda v: v in NETWORKS)
ANY_TABLE = Table(checked_elsewhere=True)
TABLES = Kind("an array of tables", lambda v: isinstance(v, list) and all(isinstance(x, dict) for x in v))

# -- config.toml ----------------------------------------------------------------

BITCOIND = Table({"rpc_url": STR, "cookie_file": STR, "zmq": STR, "user": STR, "password_secret": STR})
ESPLORA = Table({"url": STR})
PRICE_SOURCE_NAMES = ("kraken", "coinbase", "bitstamp", "coingecko", "fx")  # actors/price_sources.py

CONFIG = Table({
    "bus": Table({"publish_endpoint": STR, "subscribe_endpoint": STR, "max_message_bytes": INT,
                  "heartbeat_ivl_ms": INT, "heartbeat_timeout_ms": INT, "handshake_ivl_ms": INT, "listen": STR}),
    "broker": Table({"reload_interval": NUMBER, "denied_events_per_second": NUMBER, "max_subscriptions": INT,
                     "publish_rate": NUMBER, "publish_burst": NUMBER, "publish_unlimited_roles": STR_LIST}),
    "runtime": Table({"heartbeat_interval": NUMBER}),
    "vault": Table({"token_lifetime": INT, "key_grace": INT, "revocations_interval": NUMBER,
                    "token_public_key": STR, "passphrase_file": STR}),
    "event_logger": Table({"segment_mb": NUMBER, "fsync_interval_ms": NUMBER, "retention_days": NUMBER,
                           "max_mb": NUMBER, "rejected_sample": INT, "rejected_period_s": NUMBER,
                           "quota_mb": NUMBER, "quota_period_s": NUMBER}),
    "database": Table({"url": STR}),
    # actors/server/ (its defaults are keys/home.py's); [spaceapi]: checked by actors/server/spaceapi.py
    "server": Table({"listen": STR, "threads": INT, "page_max": INT}),
    "spaceapi": ANY_TABLE,
    "demo": Table({"simulators": BOOL, "exchanges_port": INT, "chain_rpc_port": INT, "chain_zmq_port": INT,
                   "smtp_port": INT}),
    # actors/member_mail/ (its DEFAULTS in models.py; settings() there checks the values' ranges)
    "member_mail": Table({"smtp_host": STR, "smtp_port": INT, "smtp_security": STR, "smtp_user": STR,
                          "smtp_timeout": NUMBER, "from": STR, "space_name": STR, "msgid_domain": STR,
                          "staging_to": STR, "rate_per_second": INT, "rate_per_minute": INT, "batch": INT,
                          "retry_base_s": NUMBER, "retry_max_s": NUMBER, "give_up_after_s": NUMBER,
                          "interrupted": STR, "templates_dir": STR, "reminder_days": INT,
                          "status_max_age_days": INT, "cosigners": STR_LIST}),
    # actors/chain_notifier/; a backend's table is named like it: [chain.bitcoind], [chain.esplora2]
    "chain": Table({"network": NETWORK, "backends": STR_LIST, "confirm_depth": INT, "reconcile_interval": NUMBER,
                    "recent_blocks": INT, "rescan_limit": INT},
                   patterns=((lambda k: k.startswith("bitcoind"), "bitcoind*", BITCOIND),
                             (lambda k: k.startswith("esplora"), "esplora*", ESPLORA))),
    # actors/reporter/actor.py
    "reporter": Table({"at": STR, "interval": NUMBER, "max_lag": INT, "chain_timeout": NUMBER,
                       "price_timeout": NUMBER,
                       # rule groups: name = {statuses = [...], group = "keys"} (actors/reporter/reports.py
                       # group_rules checks the names, the statuses and that statuses is given)
                       "groups": Table(patterns=((lambda k: True, "<rule>",
                                                  Table({"statuses": MEMBER_STATUSES, "group": STR})),))}),
    # actors/business_mgr/
    "business": Table({"receive": STR, "price_max_age": NUMBER, "watch_retry": NUMBER, "vend_retry": NUMBER,
                       "vend_command_ttl": INT, "vend_deadline": INT, "late_window": INT, "reannounce_min_s": INT,
                       "max_invoices_per_minute": INT, "reconcile_interval": NUMBER, "gap_limit": INT,
                       "reuse_after_s": INT}),
    # actors/member_data/ (its defaults are keys/home.py's)
    "members": Table({"receive": STR, "gap_limit": INT, "price_max_age": NUMBER, "watch_retry": NUMBER}),
    # actors/payout_mgr/ (its defaults are keys/home.py's)
    "treasury": Table({"descriptor": STR, "change_descriptor": STR, "gap_limit": INT, "name": STR,
                       "watch_retry": NUMBER, "lookahead": INT}),
    # actors/payout_mgr/ledger.py (its defaults are DEFAULTS there)
    "payouts": Table({"max_payout_cad": DECIMAL, "daily_limit_cad": DECIMAL, "allowlist": STR_LIST,
                      "approvals": INT, "open_hours": INT, "fee_target_blocks": INT, "min_feerate": NUMBER,
                      "max_feerate": NUMBER, "max_fee_sats": INT, "price_max_age": NUMBER,
                      "sweep_to": STR, "sweep_above_sats": INT, "sweep_keep_sats": INT,
                      "shares": Table(patterns=((lambda k: True, "<address>", STR),))}),
    # actors/price_notifier.py
    "price": Table({"poll_interval": NUMBER, "max_age": NUMBER, "outlier_pct": DECIMAL, "min_sources": INT,
                    "timeout": NUMBER, "min_cad": DECIMAL, "max_cad": DECIMAL, "fx_interval": NUMBER,
                    "fx_max_age": NUMBER, "sources": Table(dict.fromkeys(PRICE_SOURCE_NAMES, STR))}),
})

# -- policy.toml (keys/policy.py) ------------------------------------------------

GRANTS = Table({"publish": STR_LIST, "subscribe": STR_LIST})
ROLE_NAMES = ("actor", "machine", "admin")  # keys/identity.py ROLES

POLICY = Table({
    "all": GRANTS,
    "role": Table(dict.fromkeys(ROLE_NAMES, GRANTS)),
    "identity": Table(patterns=((lambda k: True, "<identity>", GRANTS),)),
    "secrets": Table(patterns=((lambda k: True, "<secret>", STR_LIST),)),
})

# -- agent.toml (machine_agent/config.py) ------------------------------------------

SLOT = Table({"relay": STR, "active_high": BOOL, "pulse_ms": INT})

AGENT = Table({
    "name": STR, "key_file": STR, "state_dir": STR, "pins": STR, "i2c_bus": INT, "clock": STR,
    "heartbeat_interval": NUMBER,
    "bus": Table({"publish_endpoint": STR, "subscribe_endpoint": STR, "broker_public_key": STR}),
    "vault": Table({"token_public_key": STR}),
    "slots": Table(patterns=((str.isdigit, "<slot number>", SLOT),)),
    # Inputs: machine_agent.config.load_inputs checks their keys, types and ranges.
    "buttons": ANY_TABLE, "coin": ANY_TABLE, "door": ANY_TABLE, "drop": ANY_TABLE, "sensors": TABLES,
})


# -- the check ------------------------------------------------------------------

def check(data: dict, schema: Table, source) -> dict:
    """Raise ConfigError for the first unknown key or wrongly typed value in ``data``; return it."""
    _check_table(data, schema, str(source), ())
    return data


def _where(path) -> str:
    return f"[{'.'.join(path)}] " if path else ""


def _show(value) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _check_table(data, schema: Table, source, path):
    if schema.checked_elsewhere:
        return
    for key, value in data.items():
        sub = schema.keys.get(key)
        if sub is None:
            sub = next((s for ok, _, s in schema.patterns if ok(key)), None)
        if sub is None:
            raise ConfigError(f"{source}: {_unknown(key, value, schema, path)}")
        here = (*path, key)
        if isinstance(sub, Table):
            if not isinstance(value, dict):
                raise ConfigError(f"{source}: {_where(path)}{key} must be a table ([{'.'.join(here)}]), "
                                  f"not {_show(value)}")
            _check_table(value, sub, source, here)
        elif not sub.ok(value):
            raise ConfigError(f"{source}: {_where(path)}{key} must be {sub.what}, not {_show(value)}")


def _unknown(key, value, schema: Table, path) -> str:
    labels = [*schema.keys, *(label for _, label, _ in schema.patterns)]
    guesses = [*schema.keys, *(label.rstrip("*") for _, label, _ in schema.patterns if label.endswith("*"))]
    guess = difflib.get_close_matches(key, guesses, n=1, cutoff=0.6)
    if isinstance(value, dict):
        what, name = ("section" if not path else "table"), f"[{'.'.join((*path, key))}]"
        if guess:
            return f"unknown {what} {name} (did you mean [{'.'.join((*path, guess[0]))}]?)"
    else:
        what, name = "key", repr(key)
        if guess:
            return f"{_where(path)}unknown key {key!r} (did you mean {guess[0]!r}?)"
    return f"{_where(path) if what == 'key' else ''}unknown {what} {name}" + (
        f" (known: {', '.join(labels)})" if labels else "")


__all__ = ["check", "CONFIG", "POLICY", "AGENT", "Kind", "Table", "ConfigError"]
