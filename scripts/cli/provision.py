"""Provisioning: `dctrl init` creates a home (config, policy, keys, the Vault's files, the
database, the demo machine's folder). It lives on the CLI side because it reaches into every
layer: keys/ (the home's files), actors/ (the Vault's secret store, the database) and
machine_agent/ (the demo machine's agent.toml); keys/home.py only reads a home.

Which identities get keys and what the policy template grants come from the actor registry
(actors/registry.py), plus ``admin`` and the demo machine ``vm1``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import nacl.signing

from actors.registry import ALL_GRANTS, ROLE_GRANTS, server_actors
from keys.files import atomic_write, current_umask
from keys.home import DEFAULTS, Home
from keys.identity import IdentityKeys
from proto.errors import ConfigError

DEMO_MACHINE = "vm1"
ADMIN = "admin"

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

# The report server (`dctrl serve`, run by `dctrl up`): read-only REST, HTML and SpaceAPI.
# Tokens: `dctrl server token add NAME --scope S --ttl 30d`. For the LAN: "0.0.0.0:{server_port}".
[server]
listen = "127.0.0.1:{server_port}"

# The SpaceAPI (https://spaceapi.io, v15) at /spaceapi.json, open to all: these static fields,
# state.open from door_machine's door switch (machine.NAME.door), the active members counted.
# [spaceapi]
# space = "DCTRL"
# logo = "https://example.org/logo.png"
# url = "https://example.org/"
# contact = {{ email = "info@example.org" }}
# door_machine = "vm1"

[demo]
# `dctrl up` also runs the exchange simulator, and the notifiers use it: dctrl runs
# anywhere with no internet. In production set simulators = false and point
# [price.sources] (and [chain]) at real services.
simulators = true
exchanges_port = {exchanges_port}
chain_rpc_port = {chain_rpc_port}
chain_zmq_port = {chain_zmq_port}
smtp_port = {smtp_port}          # `dctrl sim smtp`: keeps every mail in HOME/sim/mail (a Maildir)

# Member mail (actors/member_mail/; every key and its default: models.py DEFAULTS). The demo
# sends to the sink above. Production: your server, smtp_security = "starttls" (or "tls" on
# 465), smtp_user = "..." with the password in the Vault (dctrl vault set-secret
# smtp_password) and smtp_password = ["member_mail"] under [secrets] in policy.toml.
[member_mail]
smtp_host = "127.0.0.1"
smtp_port = {smtp_port}
from = "DCTRL <members@dctrl.invalid>"

# The chain (actors/chain_notifier/). Backends are tried in order. Production:
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

# Sales (actors/business_mgr/). receive: the account xpub (or a wpkh(...) descriptor)
# invoice addresses are derived from; no private key ever comes here. The demo's is
# a random regtest account whose private key was thrown away at `dctrl init`.
[business]
receive = "{receive}"

# Member dues (actors/member_data/). receive: the account xpub dues addresses are derived
# from, never the sales one (the demo's: account 1 of the same thrown-away seed).
[members]
receive = "{members_receive}"

# The treasury (actors/payout_mgr/): a k-of-n wsh(sortedmulti(...)) descriptor with each
# co-signer's key origin, watch-only; payouts are signed by the co-signers in their own wallets.
# `dctrl treasury export` gives them the wallet to import. Production: your co-signers' xpubs
# (e.g. Sparrow's or Bitcoin Core's exported descriptor, /<0;1>/*). The demo's is a 2-of-3 of
# three thrown-away regtest keys whose mnemonics are in demo/cosigner1.key .. cosigner3.key
# under this home: FOR THE DEMO ONLY (a real co-signer's key never comes near the server).
[treasury]
descriptor = "{treasury}"
name = "dctrl demo treasury"

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


POLICY_HEAD = """\
# Who may publish and subscribe what. Prefixes match whole dot-separated segments:
# "machine.{self}" grants machine.vm1 and machine.vm1.* to vm1, never machine.vm10.
# {self} is the identity's own name; "" grants everything. An identity's grants are
# [all] + [role.ROLE] + [identity.NAME]. The broker and the Vault reload this file live.
"""


def policy_template() -> str:
    """policy.toml for a new home: [all], [role.*] and each server actor's [identity.NAME], from
    the actor registry; [secrets] empty."""
    sections = [("all", ALL_GRANTS), *((f"role.{role}", g) for role, g in ROLE_GRANTS.items()),
                *((f"identity.{e.name}", e.grants) for e in server_actors() if e.grants.publish or e.grants.subscribe)]
    out = [POLICY_HEAD]
    for section, grants in sections:
        out.append(f"\n[{section}]\n")
        for key in ("publish", "subscribe"):
            if getattr(grants, key):
                out.append(f"{key} = {json.dumps(list(getattr(grants, key)))}\n")
    out.append("\n# secret name = identities that may read it from the Vault\n[secrets]\n")
    return "".join(out)


def identities() -> list[tuple[str, str]]:
    """(name, role) of every identity `dctrl init` creates keys for."""
    return [*((e.name, e.role) for e in server_actors()), (ADMIN, "admin"), (DEMO_MACHINE, "machine")]


def init_home(root, *, publish_endpoint=None, subscribe_endpoint=None, database_url=None,
              exchanges_port=7480, chain_rpc_port=18443, chain_zmq_port=28332, smtp_port=2525,
              server_port=8080) -> Home:
    """Create a new home with keys for every server actor, ``admin`` and ``vm1``.

    Refuses to touch an existing home (its keys would be replaced).
    """
    from actors.secretstore import SecretStore, create_key_file, load_key_file
    from keys.registry import Registry

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
    sales_xpub, dues_xpub = demo_account_xpubs(2)
    atomic_write(root / "config.toml", CONFIG_TEMPLATE.format(
        pub=publish_endpoint or DEFAULTS["bus"]["publish_endpoint"],
        sub=subscribe_endpoint or DEFAULTS["bus"]["subscribe_endpoint"],
        token_pub=bytes(token_key.verify_key).hex(),
        db_url=db_url,
        exchanges_port=exchanges_port,
        chain_rpc_port=chain_rpc_port,
        chain_zmq_port=chain_zmq_port,
        smtp_port=smtp_port,
        server_port=server_port,
        receive=sales_xpub,
        members_receive=dues_xpub,
        treasury=demo_treasury(root / "demo"),
    ).encode(), mode=0o600)
    atomic_write(root / "policy.toml", policy_template().encode(), mode=0o600)
    registry = Registry(root / "keys" / "registry.json")
    for name, role in identities():
        keys = IdentityKeys.generate(name)
        keys.save(root / "keys" / f"{name}.key")
        registry.add(keys, role)
    registry.save()
    home = Home(root)
    create_key_file(home.vault_dir / "secrets.key")
    from machine_agent.config import write_folder  # the demo's simulated machine vm1

    write_folder(home, DEMO_MACHINE, root / "agents" / DEMO_MACHINE, demo=True)
    if home.database_url.startswith("sqlite"):  # create the embedded database file (WAL)
        from actors.db import connect

        connect(home.database_url).close()
        if (root / "dctrl.sqlite3").exists():  # SQLite gives its -wal and -shm files the same mode
            os.chmod(root / "dctrl.sqlite3", 0o600)
    SecretStore.create(home.vault_dir / "secrets.json", key=load_key_file(home.vault_dir / "secrets.key"))
    return home


def demo_treasury(folder: Path, k: int = 2, n: int = 3) -> str:
    """A k-of-n regtest treasury descriptor (wsh(sortedmulti), m/48h/1h/0h/2h, /<0;1>/*) of ``n``
    fresh BIP 39 mnemonics, each written to ``folder``/cosignerI.key (0600) so the demo can sign
    with them (`payouts sign --key`). For the demo only."""
    from embit import bip32, bip39
    from embit.descriptor.checksum import add_checksum
    from embit.networks import NETWORKS

    net = NETWORKS["regtest"]
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(folder, 0o700)
    keys = []
    for i in range(1, n + 1):
        mnemonic = bip39.mnemonic_from_bytes(os.urandom(16))
        atomic_write(folder / f"cosigner{i}.key", f"{mnemonic}\n".encode(), mode=0o600)  # (the mnemonic alone)
        root = bip32.HDKey.from_seed(bip39.mnemonic_to_seed(mnemonic), version=net["xprv"])
        account = root.derive("m/48h/1h/0h/2h").to_public().to_string(version=net["xpub"])
        keys.append(f"[{root.my_fingerprint.hex()}/48h/1h/0h/2h]{account}/<0;1>/*")
    return add_checksum(f"wsh(sortedmulti({k},{','.join(keys)}))")


def demo_account_xpub() -> str:
    """A BIP84 regtest account tpub from a random seed that is thrown away: payments to its
    addresses can never be spent, which is right for a demo and wrong for anything else."""
    return demo_account_xpubs(1)[0]


def demo_account_xpubs(n: int) -> list[str]:
    """Accounts 0 .. n-1 (m/84h/1h/ih) of one random regtest seed that is thrown away: the
    demo's sales account (0) and its member dues account (1)."""
    from embit import bip32
    from embit.networks import NETWORKS

    net = NETWORKS["regtest"]
    root = bip32.HDKey.from_seed(os.urandom(32), version=net["xprv"])
    return [root.derive(f"m/84h/1h/{i}h").to_public().to_string(version=net["xpub"]) for i in range(n)]
