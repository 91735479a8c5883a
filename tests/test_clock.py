"""machine_agent.clock: the adjtimex(2) call through ctypes on this machine, the struct layout
against the C compiler's, and the synchronised/not-synchronised decision for every state."""

import ctypes
import shutil
import subprocess
import sys
import time

import pytest

from machine_agent.clock import (STA_NANO, STA_UNSYNC, TIME_ERROR, Timex, is_synchronised, kernel_sync_clock, make_clock,
                                 read_timex, system_clock)
from machine_agent.mgr import system_clock as mgr_system_clock
from proto.errors import ConfigError

linux = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="adjtimex(2) is Linux only")


# -- the decision, apart from the system call ----------------------------------------

@pytest.mark.parametrize("state, synced", [
    (0, True),    # TIME_OK
    (1, True),    # TIME_INS: a leap second will be inserted; the clock is synchronised
    (2, True),    # TIME_DEL
    (3, True),    # TIME_OOP: the leap second is in progress
    (4, True),    # TIME_WAIT: just after it
    (5, False),   # TIME_ERROR: not synchronised
    (-1, False),  # the call failed
    (6, False),   # unknown to us: not trusted
    (99, False),
])
def test_clock_state_decision(state, synced):
    assert is_synchronised(state) is synced
    assert (state == TIME_ERROR) == (state == 5)


# -- the call on this machine -----------------------------------------------------------

C_LAYOUT = r"""
#include <stddef.h>
#include <stdio.h>
#include <sys/timex.h>
#define F(name) printf(#name " %zu\n", offsetof(struct timex, name));
int main(void) {
    printf("sizeof %zu\n", sizeof(struct timex));
    F(modes) F(offset) F(freq) F(maxerror) F(esterror) F(status) F(constant) F(precision)
    F(tolerance) F(time) F(tick) F(ppsfreq) F(jitter) F(shift) F(stabil) F(jitcnt) F(calcnt)
    F(errcnt) F(stbcnt) F(tai)
    return 0;
}
"""


@linux
@pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler to compare with")
def test_struct_layout_matches_the_c_headers(tmp_path):
    (tmp_path / "layout.c").write_text(C_LAYOUT)
    subprocess.run(["cc", "-o", str(tmp_path / "layout"), str(tmp_path / "layout.c")], check=True,
                   capture_output=True)
    out = subprocess.run([str(tmp_path / "layout")], check=True, capture_output=True, text=True).stdout
    c = {name: int(n) for name, n in (line.split() for line in out.splitlines())}
    assert ctypes.sizeof(Timex) == c.pop("sizeof")
    assert {name: getattr(Timex, name).offset for name in c} == c


@linux
def test_adjtimex_reads_the_kernel_clock_on_this_machine(capsys):
    before = time.time()
    state, tx = read_timex()
    after = time.time()
    with capsys.disabled():  # say what this machine's kernel says (the test passes either way)
        print(f"\nadjtimex: state {state} ({'synchronised' if is_synchronised(state) else 'NOT synchronised'}), "
              f"status 0x{tx.status:04x}, maxerror {tx.maxerror} us, esterror {tx.esterror} us")
    assert 0 <= state <= TIME_ERROR
    assert tx.modes == 0  # read only: nothing was changed
    # Fields at the start, middle and end of the struct hold what the kernel always puts there,
    # so a wrong offset anywhere shows.
    # adjtimex(2): with STA_NANO in status, the field named tv_usec holds nanoseconds (seen on
    # this machine: status 0x2040, after the clock discipline switched to nanosecond mode)
    fraction_limit = 1_000_000_000 if tx.status & STA_NANO else 1_000_000
    assert int(before) - 1 <= tx.time.tv_sec <= after + 1 and 0 <= tx.time.tv_usec < fraction_limit
    assert tx.tolerance == 500 << 16  # MAXFREQ_SCALED: 500 ppm, scaled by 2^16
    assert tx.precision == 1
    assert tx.tick > 0 and 1_000_000 % tx.tick == 0  # µs per USER_HZ tick (10000 at 100 Hz)
    assert 0 <= tx.maxerror and 0 <= tx.esterror
    if tx.status & STA_UNSYNC:  # the kernel answers TIME_ERROR whenever STA_UNSYNC is set
        assert state == TIME_ERROR


@linux
def test_kernel_clock_follows_the_kernel_state():
    state, _ = read_timex()
    now = kernel_sync_clock()
    if is_synchronised(state):
        assert now is not None and abs(now - time.time()) < 1
    else:
        assert now is None


def test_make_clock_kinds():
    assert make_clock("system") is system_clock
    t = make_clock("system")()
    assert abs(t - time.time()) < 1 and abs(t - mgr_system_clock()) < 1
    if sys.platform.startswith("linux"):
        assert make_clock("kernel") is kernel_sync_clock
    else:
        with pytest.raises(ConfigError, match="adjtimex"):
            make_clock("kernel")
    with pytest.raises(ConfigError, match="unknown clock 'ntp'"):
        make_clock("ntp")


def test_clock_module_stays_light():
    """Only the standard library and proto.errors: nothing the agent does not ship."""
    code = ("import sys; import machine_agent.clock; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('peewee', 'bottle', 'psycopg2', 'zmq', 'nacl', 'actors', 'gpiozero')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_agent_config_chooses_the_trusted_clock(tmp_path):
    from machine_agent.config import load_machine
    from proto.errors import ConfigError

    path = tmp_path / "agent.toml"
    path.write_text('name = "vm1"\n')
    assert load_machine(path).clock == "system"
    path.write_text('name = "vm1"\nclock = "kernel"\n')
    assert load_machine(path).clock == "kernel"
    path.write_text('name = "vm1"\nclock = "ntp"\n')
    with pytest.raises(ConfigError, match="clock must be 'system' or 'kernel'"):
        load_machine(path)
