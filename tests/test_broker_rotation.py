"""Rotating the broker's key (issue 9.4): every client pins the broker's Curve key and the
broker loads its key only at start, so a rotation under a running network cut every new
connection. The CLI refuses it while the network may run and prints the procedure; the
offline rotation re-pins the home's agents, and the network with its agent comes back."""

import json

from tests.harness import Network, dctrl, new_home
from tests.test_vending import Agent


def agent_pin(home) -> str:
    text = (home.root / "agents" / "vm1" / "agent.toml").read_text()
    return next(line for line in text.splitlines() if line.startswith("broker_public_key"))


def test_broker_rotation_is_refused_live_and_done_offline_with_a_running_agent(tmp_path):
    home = new_home(tmp_path / "home")
    net = Network(home).start_healthy("broker", "vault", "event_logger")
    agent = Agent(home).start()
    try:
        agent.wait_ready()
        assert dctrl(home, "status", "--expect", "broker,vault,vm1", "--until", "30", check=False).returncode == 0
        before = json.loads((home.root / "keys" / "registry.json").read_text())
        pin = agent_pin(home)
        refused = dctrl(home, "keys", "rotate", "broker", check=False)
        assert refused.returncode != 0
        assert "dctrl keys rotate broker --offline" in refused.stderr and "agent.toml" in refused.stderr
        assert json.loads((home.root / "keys" / "registry.json").read_text()) == before  # nothing rotated
        assert agent_pin(home) == pin
        # (the control: the bus still works for the running agent)
        assert dctrl(home, "status", "--expect", "broker,vault,vm1", "--until", "10", check=False).returncode == 0

        # The procedure: stop everything, rotate offline, start again.
        agent.stop()
        net.close()
        out = dctrl(home, "keys", "rotate", "broker", "--offline").stdout
        assert "updated broker_public_key in" in out and agent_pin(home) != pin
        net = Network(home).start_healthy("broker", "vault", "event_logger")
        agent.start()
        agent.wait_ready()
        status = dctrl(home, "status", "--expect", "broker,vault,vm1", "--until", "30", check=False)
        assert status.returncode == 0, status.stdout + status.stderr
    finally:
        agent.stop()
        net.close()


def test_vault_rotation_keeps_the_bus_up_through_the_grace_with_a_running_agent(tmp_path):
    """The Vault's identity keys rotate like any actor's: the running Vault loads its new key,
    the agent and new clients keep getting tokens, and the old key ends after the grace.
    (The token-signing key every process pins, vault/token.key, is not rotated by this.)"""
    from tests.harness import BusClient, wait_for

    home = new_home(tmp_path / "home")
    net = Network(home).start_healthy("broker", "vault", "event_logger")
    agent = Agent(home).start()
    try:
        agent.wait_ready()
        import time

        out = dctrl(home, "keys", "rotate", "vault", "--grace", "5").stdout
        assert "rotated vault to key v2" in out
        grace_ends = time.time() + 5
        wait_for(lambda: "keys rotated to v2" in net.log("vault"), timeout=30, what="the Vault on its new key")
        wait_for(lambda: time.time() > grace_ends + 1, timeout=10, what="the old key's grace to end")
        client = BusClient(home, "admin", prefixes=["health"])  # a new token, after the grace
        try:
            beat = client.expect(lambda d: d.message is not None and d.message.topic == "health.vault"
                                 and d.message.body["status"] == "ok", timeout=30, what="the Vault ok")
            assert beat.message.sender == "vault"
        finally:
            client.close()
        status = dctrl(home, "status", "--expect", "broker,vault,vm1", "--until", "30", check=False)
        assert status.returncode == 0, status.stdout + status.stderr
    finally:
        agent.stop()
        net.close()
