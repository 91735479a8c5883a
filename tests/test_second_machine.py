"""A second vending machine, as the README's recipe adds one (issue 9.8 and 9.9): keys,
`machines add`, `slots set`, `agent-config --server`, the broker listening beyond
loopback, the agent run from the written folder, and the first sale on it."""

import subprocess
import sys
import time

import pytest

from actors.business_mgr.models import btc
from tests.harness import ROOT, BusClient, Network, dctrl, new_home, topic_is, wait_for

PRICE = "100000.00"


@pytest.fixture
def home(tmp_path):
    h = new_home(tmp_path / "home")
    config = h.root / "config.toml"
    # The broker listens on every interface; machines reach it at another address (here
    # 127.0.0.2, in the loopback range, standing for the server's LAN address).
    config.write_text(config.read_text().replace("[bus]\n", '[bus]\nlisten = "0.0.0.0"\n', 1))
    return type(h)(h.root)


def test_agent_config_refuses_to_overwrite_and_warns_about_loopback(home, tmp_path):
    dctrl(home, "keys", "add", "vm2", "--role", "machine")
    out = tmp_path / "vm2"
    first = dctrl(home, "agent-config", "vm2", "--out", str(out))
    assert "on loopback, which a vending machine cannot reach" in first.stderr
    (out / "agent.toml").write_text((out / "agent.toml").read_text() + "# edited by hand\n")
    again = dctrl(home, "agent-config", "vm2", "--out", str(out), "--server", "10.0.0.5", check=False)
    assert again.returncode != 0 and "give --force" in again.stderr
    assert "# edited by hand" in (out / "agent.toml").read_text()
    dctrl(home, "agent-config", "vm2", "--out", str(out), "--server", "10.0.0.5", "--force")
    text = (out / "agent.toml").read_text()
    port = home.config["bus"]["publish_endpoint"].rsplit(":", 1)[1]
    assert f'publish_endpoint = "tcp://10.0.0.5:{port}"' in text and "# edited by hand" not in text


def test_a_second_machine_from_keys_to_its_first_sale(home, tmp_path):
    from scripts.sim.chain import ChainSim

    demo = home.config["demo"]
    sim = ChainSim(home.root / "sim" / "chain", rpc_port=demo["chain_rpc_port"],
                   zmq_port=demo["chain_zmq_port"]).start()
    net = Network(home)
    agent = None
    observer = prices = None
    try:
        net.start_healthy("broker", "vault", "business_data", "chain_notifier", timeout=30)
        net.start("business_mgr")
        # The recipe: a key, the machine, its slot (with the relay), the agent's folder.
        dctrl(home, "keys", "add", "vm2", "--role", "machine")
        added = dctrl(home, "machines", "add", "vm2", "--location", "upstairs")
        assert "no key" not in added.stdout + added.stderr
        dctrl(home, "slots", "set", "vm2", "1", "--product", "Mate", "--price-cad", "2.00", "--relay", "gpio:22")
        dctrl(home, "slots", "set", "vm2", "2", "--product", "Chips", "--price-cad", "1.50")
        out = tmp_path / "vm2"
        written = dctrl(home, "agent-config", "vm2", "--out", str(out), "--server", "127.0.0.2")
        assert "FILL-IN" in written.stdout  # slot 2 has no relay yet: the operator is told
        text = (out / "agent.toml").read_text()
        assert '[slots.1]                 # Mate\nrelay = "gpio:22"' in text
        assert "tcp://127.0.0.2:" in text and "127.0.0.1" not in text
        text = text.replace('state_dir = "state"\n', 'state_dir = "state"\npins = "mock"\n', 1)  # (no GPIO here)
        (out / "agent.toml").write_text(text)
        refused = subprocess.run([sys.executable, "-m", "machine_agent.main", "--config", str(out / "agent.toml")],
                                 cwd=ROOT, capture_output=True, text=True, timeout=30)
        assert refused.returncode != 0 and "FILL-IN" in refused.stderr  # the unfilled relay stops it
        # The operator fills in slot 2's relay and the buttons (mock pins: no hardware here).
        text = text.replace('relay = "gpio:FILL-IN"', 'relay = "gpio:23"')
        (out / "agent.toml").write_text(text + '\n[buttons]\n1 = "gpio:5"\n2 = "gpio:6"\n')
        log = open(tmp_path / "vm2.log", "ab")
        agent = subprocess.Popen([sys.executable, "-m", "machine_agent.main", "--config", str(out / "agent.toml")],
                                 cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        observer = BusClient(home, "admin", prefixes=["invoice", "machine.vm2.vend.ack", "health"])
        prices = BusClient(home, "price_notifier")
        observer.expect(topic_is("health.vm2", status="ok"), timeout=30, what="vm2 healthy through 127.0.0.2")

        def priced():
            prices.publish("price.btc_cad", {"cad_per_btc": PRICE, "sources": [], "used": 3,
                                             "as_of": int(time.time() * 1000)})
            try:
                return observer.expect(topic_is("health.business_mgr", status="ok"), timeout=2)
            except AssertionError:
                return None
        wait_for(priced, timeout=30, what="business_mgr ok with a price")
        # The first sale: a press on vm2, the payment, one pulse of slot 1's relay.
        observer.drain()
        dctrl(home, "sim", "press", "vm2", "1", "--socket", str(out / "state" / "sim.sock"))
        opened = observer.expect(topic_is("invoice.opened", machine="vm2", slot=1), timeout=20).message.body
        assert opened["sats"] == 2000
        sim.pay(opened["address"], btc(opened["sats"]))
        ack = observer.expect(topic_is("machine.vm2.vend.ack", invoice=opened["invoice"]), timeout=20).message.body
        assert (ack["status"], ack["pulsed_ms"]) == ("vended", 500)
        assert "relay gpio:22 (slot 1) on for 500 ms" in (tmp_path / "vm2.log").read_text()
    finally:
        for c in (observer, prices):
            if c is not None:
                c.close()
        if agent is not None:
            agent.terminate()
            agent.wait(20)
        net.close()
        sim.stop()


def test_rotating_a_machine_key_says_where_it_goes(home):
    """The demo's vm1 runs from HOME/agents/vm1/: its new key is put there (the agent
    reloads it); a machine elsewhere is told where to copy the key."""
    out = dctrl(home, "keys", "rotate", "vm1", "--grace", "60").stdout
    local = home.root / "agents" / "vm1" / "vm1.key"
    assert f"copied the new key to {local}" in out
    assert local.read_bytes() == home.key_file("vm1").read_bytes() and (local.stat().st_mode & 0o777) == 0o600
    dctrl(home, "keys", "add", "vm2", "--role", "machine")
    out = dctrl(home, "keys", "rotate", "vm2", "--grace", "60").stdout
    assert "to the machine as vm2.key, beside its agent.toml" in out
