"""The report server's API tokens through the CLI (`dctrl server token add|list|revoke`): scopes,
expiry, revocation, the file (0600, hashes only) and bad input refused with a clear error; and the
store's check, as the server uses it, with a clock the test moves."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import threading

import pytest

from actors.server.tokens import SCOPES, TokenStore, parse_ttl
from proto.errors import DctrlError
from tests.harness import dctrl, new_home


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    return new_home(tmp_path_factory.mktemp("tokens") / "home")


def add(home, name, *args):
    out = dctrl(home, "server", "token", "add", name, *args, "--json")
    return json.loads(out.stdout)


def listing(home):
    return {r["name"] + ":" + r["id"]: r for r in json.loads(dctrl(home, "server", "token", "list", "--json").stdout)}


def test_add_list_revoke(home):
    made = add(home, "treasurer", "--scope", "finance", "--scope", "members,events", "--ttl", "30d")
    token = made["token"]
    assert token.startswith(f"dctrl_{made['id']}_") and made["scopes"] == list(SCOPES)  # public always
    assert made["expires"] - made["created"] == 30 * 86400 and made["revoked"] is None
    assert "hash" not in made
    row = listing(home)[f"treasurer:{made['id']}"]
    assert row["state"] == "valid" and "token" not in row and "hash" not in row
    # the text form: the token printed once, with how to use it
    text = dctrl(home, "server", "token", "add", "grafana", "--scope", "public", "--ttl", "12h").stdout
    lines = text.splitlines()
    assert lines[0].startswith("token grafana (id ") and "scopes public" in lines[0]
    assert lines[1].startswith("dctrl_") and "shown once" in lines[2]
    table = dctrl(home, "server", "token", "list").stdout
    assert "treasurer" in table and "grafana" in table and "dctrl_" not in table
    # a second valid token of one name is refused until the first is revoked
    again = dctrl(home, "server", "token", "add", "treasurer", "--scope", "finance", check=False)
    assert again.returncode == 2 and "a valid token named 'treasurer' exists" in again.stderr
    out = dctrl(home, "server", "token", "revoke", "treasurer").stdout
    assert out.strip() == f"revoked token treasurer (id {made['id']})"
    assert listing(home)[f"treasurer:{made['id']}"]["state"] == "revoked"
    store = TokenStore(home.server_tokens_path)
    assert store.check(token) == (None, "token treasurer revoked")
    second = add(home, "treasurer", "--scope", "finance")
    assert store.check(second["token"])[0].scopes == ("public", "finance")
    # revoke by id; a second revocation says there is nothing to revoke
    dctrl(home, "server", "token", "revoke", second["id"])
    gone = dctrl(home, "server", "token", "revoke", second["id"], check=False)
    assert gone.returncode == 2 and "no unrevoked token" in gone.stderr


def test_the_file_holds_hashes_only_and_is_private(home):
    made = add(home, "auditor", "--scope", "finance", "--ttl", "1w")
    path = home.server_tokens_path
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    raw = path.read_bytes()
    secret = made["token"].rsplit("_", 1)[1]
    assert made["token"].encode() not in raw and secret.encode() not in raw
    record = [r for r in json.loads(raw)["tokens"] if r["id"] == made["id"]][0]
    assert record["hash"] == hashlib.sha256(made["token"].encode()).hexdigest()
    assert stat.S_IMODE(os.stat(f"{path}.lock").st_mode) == 0o600


def test_expiry():
    """Valid until ``expires``, expired from then on (the store's clock, as the server's)."""
    import tempfile

    now = [1_900_000_000.0]
    with tempfile.TemporaryDirectory() as d:
        store = TokenStore(os.path.join(d, "t.json"), clock=lambda: now[0])
        token, record = store.add("short", ["events"], parse_ttl("1h"))
        assert store.check(token)[0] == record
        now[0] += 3599
        assert store.check(token)[0] == record
        now[0] += 1
        assert store.check(token) == (None, "token short expired")
        # an expired token's name may be given again
        store.add("short", ["events"], 60)


@pytest.mark.parametrize("args, error", [
    (["bad name", "--scope", "public"], "token name 'bad name'"),
    (["-x", "--scope", "public"], None),  # (argparse: not a name)
    (["a" * 65, "--scope", "public"], "token name"),
    (["ok\n", "--scope", "public"], "token name"),
    (["../etc", "--scope", "public"], "token name '../etc'"),
    (["ok", "--scope", "admin"], "unknown scope 'admin'; the scopes are public, members, finance, events"),
    (["ok", "--scope", "members,everything"], "unknown scope 'everything'"),
    (["ok", "--scope", "finance", "--ttl", "30"], "ttl '30': a number and a unit, like 30d"),
    (["ok", "--scope", "finance", "--ttl", "0d"], "ttl '0d': from 1s to 1095d"),
    (["ok", "--scope", "finance", "--ttl=-1d"], "ttl '-1d'"),
    (["ok", "--scope", "finance", "--ttl", "4000d"], "ttl '4000d': from 1s to 1095d"),
    (["ok", "--scope", "finance", "--ttl", "1y"], "ttl '1y'"),
    (["ok", "--scope", "finance", "--ttl", "30d\n"], "ttl"),
    (["ok"], "the following arguments are required: --scope"),
])
def test_bad_input_is_refused(home, args, error):
    before = home.server_tokens_path.read_bytes() if home.server_tokens_path.exists() else None
    proc = dctrl(home, "server", "token", "add", *args, check=False)
    assert proc.returncode == 2, proc
    if error:
        assert error in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    after = home.server_tokens_path.read_bytes() if home.server_tokens_path.exists() else None
    assert after == before  # nothing written


def test_check_refuses_what_is_not_a_valid_token(tmp_path):
    store = TokenStore(tmp_path / "t.json")
    token, _ = store.add("x", ["members"], 3600)
    for given in (None, "", "dctrl_", token + "\n", token[:-1], token + "A", token.upper(),
                  "dctrl_00000000_" + "A" * 43, "Bearer " + token, "x" * 10_000):
        assert store.check(given)[0] is None, given
    assert store.check(token)[0].name == "x"


def test_concurrent_adds_keep_every_token(tmp_path):
    """Two `add`s at once (the CLI in two shells): the lock keeps both records."""
    path = tmp_path / "t.json"
    errors = []

    def many(prefix):
        try:
            for i in range(20):
                TokenStore(path).add(f"{prefix}{i}", ["public"], 60)
        except DctrlError as exc:  # pragma: no cover
            errors.append(exc)
    threads = [threading.Thread(target=many, args=(p,)) for p in "ab"]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(TokenStore(path).list()) == 40
