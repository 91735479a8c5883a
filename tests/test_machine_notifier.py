"""MachineNotifier, the drop sensor, the simulated machine's control socket and `dctrl sim`.

Real broker and Vault processes, real keys and tokens. In-process tests build
the agent exactly as ``dctrl-agent`` does (``machine_agent.main.build`` from an
agent.toml) with ``pins = "mock"`` and drive gpiozero's MockPins directly (a
button press is ``drive_low()`` then ``drive_high()`` on a pulled-up pin), so
every event takes the real path: gpiozero callback, debounce, the actor loop,
the bus. One test runs the real ``dctrl-agent`` process and drives it with
``dctrl sim``.
"""

import dataclasses
import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from actors.runtime import Runtime
from machine_agent import config
from machine_agent.main import build
from machine_agent.mgr import NO_DROP
from machine_agent.notifier import Sensor, read_sensor
from machine_agent.simctl import MockSMBus
from proto.errors import ConfigError
from tests.harness import DEADLINE, ROOT, Network, dctrl, new_home, topic_is, wait_for

CMD = "cmd.machine.vm1.vend"
ACK = "machine.vm1.vend.ack"
SLOT1 = """
[slots.1]
relay = "gpio:17"
pulse_ms = 100
"""


# -- fixtures: one broker + Vault for the module ----------------------------------------

@pytest.fixture(scope="module")
def home(tmp_path_factory):
    return new_home(tmp_path_factory.mktemp("notifier") / "home")


@pytest.fixture(scope="module")
def network(home):
    net = Network(home).start_healthy("broker", "vault")
    yield net
    net.close()


def agent_toml(home, folder, extra, pins="mock"):
    """An agent folder for vm1 (``dctrl agent-config``'s writer) with ``extra`` appended."""
    path = config.write_folder(home, "vm1", folder)
    text = path.read_text().replace('state_dir = "state"\n',
                                    f'state_dir = "state"\npins = "{pins}"\nheartbeat_interval = 1\n', 1)
    path.write_text(text + extra)
    return path


class Agent:
    """vm1's agent (MachineNotifier + MachineMgr + the sim socket) in a Runtime thread."""

    def __init__(self, home, folder, extra, **build_kw):
        path = agent_toml(home, folder, extra)
        # One boot counter for every vm1 of this module (the subprocess test's too): boots only grow.
        boot = home.root / "agents" / "vm1" / "state" / "boot"
        boot.parent.mkdir(mode=0o700, exist_ok=True)
        settings = dataclasses.replace(config.load(path), boot_file=boot)
        self.machine = config.load_machine(path)
        self.agent = build(settings, self.machine, **build_kw)
        self.runtime = Runtime(self.agent, settings)
        self.thread = threading.Thread(target=self.runtime.run, name="vm1", daemon=True)
        self.thread.start()
        wait_for(self.runtime.proxy.token_valid, what="vm1's token")

    def pin(self, role):
        return self.agent.sim.by_role[role].pin

    def tap(self, role, hold=0.0):
        """Activate an active-low input and release it (a button press, a pulse)."""
        pin = self.pin(role)
        pin.drive_low()
        if hold:
            time.sleep(hold)
        pin.drive_high()

    def periods(self, role):
        """[(start_us, end_us)] when the pin was active, from the simulator's report."""
        (p,) = [p for p in self.agent.sim.handle({"op": "pins"})["pins"] if p["role"] == role]
        return p["periods"]

    def mine(self, pred):
        """A predicate for messages from this agent's boot only."""
        boot = self.runtime.proxy.boot
        return lambda d: d.message is not None and d.message.boot == boot and pred(d)

    def stop(self):
        self.runtime.stop()
        self.thread.join(15)
        assert not self.thread.is_alive()


@pytest.fixture
def agent(home, network, tmp_path):
    made = []

    def start(extra, **kw):
        a = Agent(home, tmp_path / f"vm1-{len(made)}", extra, **kw)
        made.append(a)
        return a
    yield start
    for a in made:
        if a.thread.is_alive():
            a.stop()


def bodies(client, topic, n, pred=lambda b: True):
    """The next ``n`` bodies on ``topic`` (matching ``pred``), in the order they arrived."""
    return [client.expect(lambda d: topic_is(topic)(d) and pred(d.message.body), what=f"{topic} #{i + 1}"
                          ).message.body for i in range(n)]


def vend(slot=1, invoice="inv-1", cid=None):
    return {"id": cid or os.urandom(16), "expires": int(time.time()) + 30, "slot": slot, "invoice": invoice,
            "pulse_ms": None}


def ack_for(cid):
    return lambda d: d.message is not None and d.message.topic == ACK and d.message.body["id"] == cid


def ready(bm):
    """vm1 answers commands: probe an unknown slot until it is refused."""
    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline:
        cmd = vend(slot=200, invoice="probe")
        bm.publish(CMD, cmd)
        try:
            return bm.expect(ack_for(cmd["id"]), timeout=0.5, what="a probe ack")
        except AssertionError:
            continue
    raise AssertionError("vm1 never answered a probe")


# -- buttons, coins, door ---------------------------------------------------------------

BUTTONS = SLOT1 + """
[buttons]
1 = "gpio:5"
2 = "gpio:6"
debounce_ms = 50
"""


def test_button_presses_are_published_once_each(home, agent, clients):
    bm = clients(home, "business_mgr", prefixes=["machine.vm1"])
    admin = clients(home, "admin", prefixes=["health.vm1"])
    a = agent(BUTTONS)
    admin.expect(a.mine(topic_is("health.vm1", status="ok")), what="vm1's heartbeat")
    before = int(time.time() * 1000)
    a.pin("button:1").drive_low()           # press slot 1: counts at once
    a.pin("button:1").drive_high()          # contact bounce: release, press, release within 50 ms
    a.pin("button:1").drive_low()
    a.pin("button:1").drive_high()
    a.tap("button:2")                       # slot 2 has its own debounce
    time.sleep(0.08)                        # quiet for longer than debounce_ms: the next press counts
    a.tap("button:1")
    time.sleep(0.08)
    a.tap("button:2")
    after = int(time.time() * 1000)
    got = bodies(bm, "machine.vm1.button", 4)
    assert [b["slot"] for b in got] == [1, 2, 1, 2]  # the bounce was not a second press
    assert all(before <= b["pressed_at"] <= after for b in got)
    d = admin.expect(a.mine(lambda d: d.message.topic == "health.vm1"
                            and d.message.body["counters"].get("button_presses") == 4), what="4 presses counted")
    assert d.message.body["status"] == "ok"


COIN_DOOR = SLOT1 + """
[coin]
pin = "gpio:12"
settle_ms = 300
debounce_ms = 5

[door]
pin = "gpio:13"
debounce_ms = 30
"""


def test_coin_pulses_are_counted_in_bursts(home, agent, clients):
    bm = clients(home, "business_mgr", prefixes=["machine.vm1"])
    a = agent(COIN_DOOR)
    bm.expect(topic_is("machine.vm1.door"), what="the door at start")  # vm1 reaches us
    coin = a.pin("coin")
    for i in range(3):
        coin.drive_low()
        if i == 1:  # a bouncy pulse: its extra edges come within debounce_ms and are not pulses
            coin.drive_high()
            coin.drive_low()
        time.sleep(0.01)
        coin.drive_high()
        time.sleep(0.01)
    assert bodies(bm, "machine.vm1.coin", 1) == [{"pulses": 3, "total": 3}]
    a.tap("coin", hold=0.01)
    time.sleep(0.01)
    a.tap("coin", hold=0.01)
    assert bodies(bm, "machine.vm1.coin", 1) == [{"pulses": 2, "total": 5}]
    assert a.runtime.counters["coin_pulses"] == 5


def test_door_state_at_start_and_on_each_change(home, agent, clients):
    bm = clients(home, "business_mgr", prefixes=["machine.vm1"])
    admin = clients(home, "admin", prefixes=["health.vm1"])
    a = agent(COIN_DOOR)
    assert bodies(bm, "machine.vm1.door", 1) == [{"open": False}]  # the simulated door starts closed
    door = a.pin("door")  # pulled up; the closed door grounds it: high means open
    door.drive_high()
    assert bodies(bm, "machine.vm1.door", 1) == [{"open": True}]
    door.drive_low()  # bounces that end where they started publish nothing
    door.drive_high()
    time.sleep(0.1)
    door.drive_low()
    assert bodies(bm, "machine.vm1.door", 1) == [{"open": False}]
    assert a.runtime.counters["door_changes"] == 2
    d = admin.expect(a.mine(lambda d: d.message.topic == "health.vm1" and d.message.body["counters"].get(
        "door_changes") == 2), what="a heartbeat after the door closed")
    assert "door closed" in d.message.body["detail"]
    # Through the control socket the same way (what `dctrl sim door` sends).
    assert a.agent.sim.handle({"op": "door", "open": True}) == {"ok": True, "open": True, "pin": "gpio:13"}
    assert bodies(bm, "machine.vm1.door", 1) == [{"open": True}]


# -- the drop sensor ---------------------------------------------------------------------

DROP = SLOT1 + """
[drop]
pin = "gpio:19"
timeout_ms = {timeout}
simulate = {simulate}
"""


def test_drop_sensor_confirms_the_vend(home, agent, clients):
    bm = clients(home, "business_mgr", prefixes=[ACK, "machine.vm1.drop"])
    a = agent(DROP.format(timeout=2000, simulate="false"))
    ready(bm)
    relay = a.pin("relay:1")
    fell = threading.Event()

    def item_falls_during_the_pulse():
        wait_for(lambda: relay.state, what="the relay on")
        a.tap("drop")
        fell.set()
    threading.Thread(target=item_falls_during_the_pulse, daemon=True).start()
    cmd = vend(1)
    bm.publish(CMD, cmd)
    body = bm.expect(ack_for(cmd["id"])).message.body
    assert fell.is_set()
    assert body == {"id": cmd["id"], "status": "vended", "slot": 1, "invoice": "inv-1", "reason": None,
                    "pulsed_ms": 100, "dropped": True}
    assert bodies(bm, "machine.vm1.drop", 1)[0]["slot"] == 1
    assert len(a.periods("relay:1")) == 1
    # A drop with no vend running is reported too, with no slot.
    a.tap("drop")
    assert bodies(bm, "machine.vm1.drop", 1)[0]["slot"] is None


def test_no_drop_fails_the_vend_after_exactly_one_pulse(home, agent, clients):
    bm = clients(home, "business_mgr", prefixes=[ACK])
    a = agent(DROP.format(timeout=300, simulate="false"))
    ready(bm)
    cmd = vend(1, "inv-jam")
    t0 = time.monotonic()
    bm.publish(CMD, cmd)
    body = bm.expect(ack_for(cmd["id"])).message.body
    assert time.monotonic() - t0 >= 0.1 + 0.3  # the pulse, then the whole wait for the drop
    assert body == {"id": cmd["id"], "status": "failed", "slot": 1, "invoice": "inv-jam", "reason": NO_DROP,
                    "pulsed_ms": 100, "dropped": False}
    bm.publish(CMD, cmd)  # a retry: the same answer, never a second pulse
    assert bm.expect(ack_for(cmd["id"])).message.body == body
    (p,) = a.periods("relay:1")
    assert 0.095 <= (p[1] - p[0]) / 1e6 <= 0.2
    lines = [json.loads(x) for x in a.machine.journal_file.read_text().splitlines()]
    assert [x["event"] for x in lines if x["id"] == cmd["id"].hex()] == ["received", "actuating", "done"]
    assert a.agent.mgr.journal.status(cmd["id"]) == "done"


def test_simulated_machine_drops_after_each_pulse_unless_jammed(home, agent, clients):
    bm = clients(home, "business_mgr", prefixes=[ACK])
    a = agent(DROP.format(timeout=1000, simulate="true"))
    ready(bm)
    first = vend(1)
    bm.publish(CMD, first)
    assert bm.expect(ack_for(first["id"])).message.body["dropped"] is True
    (relay,), (drop,) = a.periods("relay:1"), a.periods("drop")
    assert drop[0] >= relay[1] + 100_000  # the item falls simulate_delay_ms (150) after the pulse ends
    assert a.agent.sim.handle({"op": "jam", "vends": 1}) == {"ok": True, "jammed": 1, "simulate": True}
    second = vend(1)
    bm.publish(CMD, second)
    body = bm.expect(ack_for(second["id"])).message.body
    assert (body["status"], body["reason"], body["dropped"]) == ("failed", NO_DROP, False)
    assert len(a.periods("relay:1")) == 2 and len(a.periods("drop")) == 1


# -- I2C sensors -------------------------------------------------------------------------

def test_sensor_values_are_exact_decimals():
    bus = MockSMBus(registers={0x48: {0: [0x19, 0x00]}, 0x49: {0: [0xFF, 0x80]}, 0x4A: {0: [0x00, 0x20]},
                               0x40: {3: [87]}})
    assert read_sensor(bus, Sensor("t", 0x48)) == "25.000"
    assert read_sensor(bus, Sensor("t", 0x49)) == "-0.500"
    assert read_sensor(bus, Sensor("t", 0x4A)) == "0.125"
    assert read_sensor(bus, Sensor("h", 0x40, register=3, kind="byte", scale="0.5")) == "43.5"
    with pytest.raises(OSError):
        read_sensor(bus, Sensor("t", 0x50))


SENSORS = SLOT1 + """
[[sensors]]
name = "temp"
i2c = 0x48
interval_s = 1

[[sensors]]
name = "fridge"
i2c = 0x49
interval_s = 1
"""


def test_sensors_are_read_on_schedule_and_failures_degrade_health(home, agent, clients):
    bm = clients(home, "business_mgr", prefixes=["machine.vm1.sensor"])
    admin = clients(home, "admin", prefixes=["health.vm1"])
    a = agent(SENSORS)  # mock pins: the in-memory I2C bus, an LM75 at each address reading 21.5 C
    got = {b["name"]: b for b in bodies(bm, "machine.vm1.sensor", 2)}
    assert got["temp"] == {"name": "temp", "value": "21.500", "unit": "C"}
    assert a.agent.sim.handle({"op": "i2c", "addr": 0x48, "register": 0, "data": [0xE7, 0x00]})["ok"]
    assert bodies(bm, "machine.vm1.sensor", 1, lambda b: b["value"] == "-25.000")[0]["name"] == "temp"
    a.stop()

    class Broken(MockSMBus):
        def read_i2c_block_data(self, addr, register, length):
            if addr == 0x49:
                raise OSError(121, "Remote I/O error")
            return super().read_i2c_block_data(addr, register, length)
    b = agent(SENSORS, i2c_bus=Broken(registers={0x48: {0: [0x15, 0x80]}}))
    d = admin.expect(b.mine(lambda d: d.message.topic == "health.vm1" and d.message.body["status"] == "degraded"),
                     what="a degraded heartbeat")
    assert "sensor fridge: OSError" in d.message.body["detail"] and "temp 21.500 C" in d.message.body["detail"]
    assert d.message.body["counters"]["sensor_errors"] >= 1


# -- configuration -----------------------------------------------------------------------

@pytest.mark.parametrize("extra, message", [
    ('[buttons]\n1 = "gpio:17"\n', "gpio:17 is used by both slots.1 relay and buttons.1"),
    ('[buttons]\n1 = "gpio:99"\n', '[buttons] 1 must be "gpio:N" (N 0..53)'),
    ('[buttons]\n1 = "gpio:5"\n300 = "gpio:6"\n', "[buttons] slot 300 is not 0..255"),
    ('[buttons]\n1 = "gpio:5"\n[coin]\npin = "gpio:5"\n', "gpio:5 is used by both buttons.1 and coin.pin"),
    ('[coin]\npin = "gpio:12"\nsettle = 200\n', "[coin]: unknown key(s) settle (known: pin, pull_up"),
    ('[coin]\nsettle_ms = 200\n', '[coin] pin must be "gpio:N"'),
    ('[door]\npin = "gpio:13"\nopen_level = "up"\n', '[door] open_level must be "high" or "low"'),
    ('[drop]\npin = "gpio:19"\nsimulate = "yes"\n', "[drop] simulate must be true or false"),
    ('[drop]\npin = "gpio:19"\ntimeout_ms = 100\nsimulate_delay_ms = 150\n',
     "[drop] simulate_delay_ms must be an integer 0..99"),
    ('[[sensors]]\nname = "temp"\ni2c = 0x90\n', "[[sensors]] temp: i2c must be an integer 3..119"),
    ('[[sensors]]\nname = "Temp"\ni2c = 0x48\n', "[[sensors]] #1: name must match"),
    ('[[sensors]]\nname = "t"\ni2c = 0x48\nscale = 0.5\n', "scale must be a decimal string"),
    ('[[sensors]]\nname = "t"\ni2c = 0x48\nkind = "bme280"\n', '[[sensors]] t: kind must be "lm75" or "byte"'),
    ('[[sensors]]\nname = "t"\n', "[[sensors]] t: i2c (the device address, e.g. 0x48) is required"),
])
def test_bad_input_config_is_refused_clearly(home, tmp_path, extra, message):
    path = agent_toml(home, tmp_path / "vm1", SLOT1 + extra)
    with pytest.raises(ConfigError) as info:
        config.load_machine(path)
    assert str(info.value).startswith(f"{path}: ") and message in str(info.value), str(info.value)


def test_dctrl_agent_refuses_a_bad_input_config_before_joining(home, tmp_path):
    path = agent_toml(home, tmp_path / "vm1", SLOT1 + '[door]\npin = "gpio:17"\n')
    proc = subprocess.run([sys.executable, "-m", "machine_agent.main", "--config", str(path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "dctrl-agent: " in proc.stderr and "gpio:17 is used by both slots.1 relay and door.pin" in proc.stderr


# -- the real agent and `dctrl sim` ---------------------------------------------------------

AGENT_SCRIPT = (
    "import sys, machine_agent.main as m; rc = m.main(sys.argv[1:]);"
    "print('SERVER-MODULES', [x for x in ('peewee', 'bottle', 'psycopg2') if x in sys.modules]); sys.exit(rc)")


def test_dctrl_sim_drives_the_real_agent(home, network, clients):
    """`make run`'s vm1: the folder `dctrl init` wrote, the real dctrl-agent with --pins mock."""
    config_file = home.root / "agents" / "vm1" / "agent.toml"
    sock = home.root / "agents" / "vm1" / "state" / "sim.sock"
    bm = clients(home, "business_mgr", prefixes=["machine.vm1"])
    admin = clients(home, "admin", prefixes=["health.vm1"])
    agent = subprocess.Popen([sys.executable, "-c", AGENT_SCRIPT, "--config", str(config_file), "--pins", "mock"],
                             cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        admin.expect(lambda d: topic_is("health.vm1", status="ok")(d) and d.message.body["pid"] == agent.pid,
                     timeout=20, what="the agent's heartbeat")
        assert oct(sock.stat().st_mode & 0o777) == "0o600" and oct(sock.parent.stat().st_mode & 0o777) == "0o700"
        before = int(time.time() * 1000)
        out = dctrl(home, "sim", "press", "vm1", "1", "--wait", "0")  # (no business_mgr here)
        assert "pressed button 1 on vm1 (gpio:5" in out.stdout
        (press,) = bodies(bm, "machine.vm1.button", 1)
        assert press["slot"] == 1 and before <= press["pressed_at"] <= int(time.time() * 1000)
        # A vend on the simulated machine: the relay pulses, the simulated item falls.
        ready(bm)
        cmd = vend(1, "inv-sim")
        sent = time.time()
        bm.publish(CMD, cmd)
        ack = bm.expect(ack_for(cmd["id"])).message.body
        acked = time.time()
        assert (ack["status"], ack["pulsed_ms"], ack["dropped"]) == ("vended", 500, True)
        report = json.loads(dctrl(home, "sim", "pins", "vm1", "--json").stdout)
        pins = {p["role"]: p for p in report["pins"]}
        (on, off), = pins["relay:1"]["periods"]  # wall-clock microseconds: one pulse of 500 ms
        assert sent * 1e6 <= on < off <= acked * 1e6 and 0.495 <= (off - on) / 1e6 <= 0.7
        assert pins["relay:1"]["spec"] == "gpio:17" and pins["relay:1"]["history"][-1][1] is False
        (btn,) = pins["button:1"]["periods"]
        assert before * 1000 <= btn[0] and 0.075 <= (btn[1] - btn[0]) / 1e6 <= 0.5
        (drop,) = pins["drop"]["periods"]
        assert drop[0] > off
        assert pins["relay:2"]["periods"] == [] and report["now_us"] >= off
        table = dctrl(home, "sim", "pins", "vm1").stdout
        assert "relay:1" in table and "button:1" in table
        dctrl(home, "sim", "door", "vm1", "open")
        bm.expect(topic_is("machine.vm1.door", open=True), what="the door opening")
        dctrl(home, "sim", "coin", "vm1", "2")
        bm.expect(topic_is("machine.vm1.coin", pulses=2), what="two coin pulses")
        refused = dctrl(home, "sim", "press", "vm1", "9", check=False)
        assert refused.returncode == 2 and "no button for slot 9 (buttons: 1, 2" in refused.stderr
    finally:
        agent.send_signal(signal.SIGTERM)
        out, _ = agent.communicate(timeout=20)
    assert agent.returncode == 0, out
    assert "SERVER-MODULES []" in out, out
    assert not sock.exists()  # removed at a clean stop
    t0 = time.monotonic()
    gone = dctrl(home, "sim", "press", "vm1", "1", check=False)
    assert gone.returncode == 2 and "is `make run` up?" in gone.stderr and time.monotonic() - t0 < 10


def test_dctrl_sim_times_out_on_a_dead_socket(home, tmp_path):
    stale = tmp_path / "sim.sock"
    stale.touch()  # left by an agent that was killed: nobody answers
    t0 = time.monotonic()
    out = dctrl(home, "sim", "pins", "vm1", "--socket", str(stale), "--timeout", "0.5", check=False)
    assert out.returncode == 2
    assert "no answer from simulated machine vm1" in out.stderr and "is `make run` up?" in out.stderr
    assert time.monotonic() - t0 < 10
