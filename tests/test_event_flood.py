"""Issue 10, hole 4: one identity's flood of junk never costs the event log a valid message.

Real broker, Vault and EventLogger processes; a flooder process publishes junk (well-formed
envelopes the broker forwards, with a random token and signature) on its own granted topic
(``debug.junk``) at 18,000 a second for 5 s, while four valid senders publish numbered messages.
Every numbered message must be in the log; the junk is stored only as a bounded sample, and
summary records count the rest exactly.

The flood is sized to fit the broker's queue to one subscriber (its send high-water mark, 100,000
messages): a logger slower than the flood then falls behind but nothing is dropped on the way, so
the counts below are exact whatever the load on the machine. (A flood larger than that queue is
dropped by the broker's XPUB for a subscriber that lags, junk and valid messages alike, and
uncounted: at 60,000 a second for 6 s this test failed under a loaded suite with ~55,000 junk
frames missing. How fast the logger refuses junk is a throughput figure, not a test's.)
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time

from actors.event_logger.queries import decode_record
from actors.eventlog import read_records
from broker.broker import PEER_QUEUE
from keys.home import Home
from tests.harness import ROOT, BusClient, Network, dctrl, new_home, wait_for

SENDERS = ("admin", "ops1", "ops2", "ops3")
FLOODER = "ops9"  # an admin whose rate the broker does not limit here: the worst case for the log
JUNK_TOPIC = "debug.junk"
FLOOD_SECONDS = 5.0
# Junk frames a second: 6 times what the logger stored before this change (about 3,000 a second,
# when it lost 219 of 275 valid messages per sender); 90,000 in all, under the broker's 100,000.
FLOOD_RATE = 18_000

# The flooder: real CURVE keys (the broker admits it, the topic is in its grant).
# An XPUB socket, to see the broker's subscription arrive before sending (a PUB socket drops what
# it sends before, the slow joiner), and XPUB_NODROP: it blocks at its high-water mark instead of
# dropping, so every frame counted as sent reaches the broker.
FLOOD_SCRIPT = r"""
import os, sys, time, zmq
from keys.home import Home
from keys.identity import IdentityKeys
home = Home(sys.argv[1]); s = home.bus_settings(sys.argv[3]); k = IdentityKeys.load(s.key_file)
ctx = zmq.Context(); pub = ctx.socket(zmq.XPUB)
pub.curve_serverkey = s.broker_public; pub.curve_publickey = k.curve_public; pub.curve_secretkey = k.curve_secret
pub.setsockopt(zmq.XPUB_NODROP, 1); pub.sndhwm = 10_000; pub.linger = 30_000
mon = pub.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED)
pub.connect(s.publish_endpoint)
mon.recv_multipart(); pub.disable_monitor()
pub.recv()  # the broker's subscription: frames sent before it would be dropped here, uncounted
from proto import wire
# Envelopes the broker forwards (src is the connection's identity, the header decodes), with a
# random token and a random signature: junk only a receiver's verification can refuse.
junk = [wire.pack_payload(sys.argv[3], 1, i + 1, os.urandom(40 + i % 64), {}) + os.urandom(64)
        for i in range(256)]
topic = sys.argv[4].encode() + b"."
print("flooding", flush=True)
rate = float(sys.argv[5])
sent, start = 0, time.monotonic()
end = start + float(sys.argv[2])
send = pub.send_multipart
while time.monotonic() < end:
    for i in range(256):
        send([topic, junk[i]])
    sent += 256
    ahead = sent / rate - (time.monotonic() - start)
    if ahead > 0:
        time.sleep(ahead)
mon.close(); pub.close(); ctx.term()
print(sent, flush=True)
"""


class LogReader:
    """Reads the event log incrementally (the log holds many records; read each once)."""

    def __init__(self, directory):
        self.directory = directory
        self.next = 0
        self.valid: dict[str, set[int]] = {name: set() for name in SENDERS}
        self.rejected_stored = 0
        self.summaries: list[dict] = []

    def poll(self):
        try:
            records = list(read_records(self.directory, start_seq=self.next))
        except FileNotFoundError:
            return
        for seq, body in records:
            self.next = seq + 1
            rec = decode_record(seq, body)
            if rec["verdict"] == "suppressed":
                self.summaries.append(rec)
            elif rec["topic"] == JUNK_TOPIC:
                assert rec["verdict"] == "rejected", rec
                self.rejected_stored += 1
            elif rec["verdict"] == "accepted" and (rec["topic"] or "").startswith("debug.flood."):
                self.valid[rec["sender"]].add(rec["body"]["n"])


def test_junk_flood_from_one_identity_costs_the_event_log_no_valid_message(tmp_path):
    home = new_home(tmp_path / "home")
    with open(home.root / "config.toml", "a") as f:  # admins are rate limited by default
        f.write('\n[broker]\npublish_unlimited_roles = ["admin"]\n')
    home = Home(home.root)
    for name in (*SENDERS[1:], FLOODER):
        dctrl(home, "keys", "add", name, "--role", "admin")
    net = Network(home).start_healthy("broker", "vault", "event_logger")
    txs = []
    flooder = None
    try:
        txs = [BusClient(home, name, prefixes=["health.event_logger"] if name == "admin" else ())
               for name in SENDERS]
        flooder = subprocess.Popen([sys.executable, "-c", FLOOD_SCRIPT, str(home.root), str(FLOOD_SECONDS),
                                    FLOODER, JUNK_TOPIC, str(FLOOD_RATE)],
                                   cwd=ROOT, stdout=subprocess.PIPE, text=True)
        watchdog = threading.Timer(60, flooder.kill)  # a flooder that never connects fails, not hangs
        watchdog.start()
        assert flooder.stdout.readline().strip() == "flooding", "the flooder did not connect"
        # Numbered messages from every valid sender for as long as the flood lasts, ~50 a second
        # each (a pace, not a wait: what is checked below is read back from the log).
        sent = 0
        while flooder.poll() is None:
            sent += 1
            for tx in txs:
                tx.publish(f"debug.flood.{tx.runtime.keys.name}", {"n": sent})
            time.sleep(0.02)
        junk_sent = int(flooder.stdout.read().strip())
        watchdog.cancel()
        assert flooder.returncode == 0
        assert junk_sent + len(SENDERS) * sent < PEER_QUEUE, "the flood must fit the broker's queue"
        assert sent >= 100, f"only {sent} rounds of valid messages during the flood"

        reader = LogReader(home.events_dir)
        want = set(range(1, sent + 1))

        def all_logged():
            reader.poll()
            return all(reader.valid[n] >= want for n in SENDERS)
        try:
            wait_for(all_logged, timeout=60, interval=0.5, what="every valid message in the event log")
        except AssertionError:
            missing = {n: len(want - reader.valid[n]) for n in SENDERS}
            raise AssertionError(f"valid messages missing from the event log: {missing} of {sent} each "
                                 f"({reader.rejected_stored} junk records stored, {junk_sent} junk sent)") from None
        assert net.alive("event_logger"), "the event logger died under the flood"

        # The junk: a bounded sample stored, the rest counted in summary records, written at the
        # end of each period and at a clean stop. The broker may still hold junk when the last
        # valid message is through (it takes from each sender in turn): wait for the logger's
        # heartbeat to have counted all of it, then stop it rather than wait for the minute.
        def heartbeat_counts_all(d):
            m = d.message
            if m is None or m.topic != "health.event_logger":
                return False
            suppressed = int(re.search(r"(\d+) refused not stored", m.body["detail"] or "")[1])
            return suppressed + min(reader.rejected_stored, 100) >= junk_sent
        reader.poll()
        txs[0].expect(heartbeat_counts_all, timeout=60, what="the logger's heartbeat counting all the junk")
        assert net.signal("event_logger") == 0
        reader.poll()
        # (the log keys refused records by the claimed sender, here the flooder's own name)
        counted = reader.rejected_stored + sum(s["body"]["topics"].get(JUNK_TOPIC, 0) for s in reader.summaries)
        assert counted == junk_sent, f"{reader.rejected_stored} stored + suppressed != {junk_sent} junk sent"
        assert reader.rejected_stored <= 2 * 100, reader.rejected_stored
        summary = next(s for s in reader.summaries if JUNK_TOPIC in s["body"]["topics"])
        assert summary["topic"] == "events.suppressed" and summary["sender"] == FLOODER
        assert summary["body"]["codes"] == {"bad_token": summary["body"]["suppressed"]}
        shown = dctrl(home, "events", "query", "--json", "--topic", "events.suppressed").stdout.splitlines()
        assert sum(json.loads(ln)["body"]["suppressed"] for ln in shown) == counted - reader.rejected_stored
        print(f"junk sent {junk_sent}, stored {reader.rejected_stored}, valid {sent} x {len(SENDERS)}")
    finally:
        if flooder is not None and flooder.poll() is None:
            flooder.kill()
            flooder.wait()
        for tx in txs:
            tx.close()
        net.close()
