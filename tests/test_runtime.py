"""A script's terminal: XLA's multi-line slow-compile alarm (C++, on file descriptor 2) is
filtered out by ``setup_script``; everything else on stderr, partial lines included, passes."""

import subprocess
import sys

ALARM = (
    b"2026-12-06 06:40:02.931165: E external/xla/xla/service/slow_operation_alarm.cc:65] \n"
    b"********************************\n[Compiling module jit_chunk] Very slow compile? If you "
    b"want to file a bug, run with envvar XLA_FLAGS=--xla_dump_to=/tmp/foo and attach the "
    b"results.\n********************************\n"
)
TOOK = (
    b"E1206 06:42:31.962458  4242 slow_operation_alarm.cc:140] The operation took 2m29.04s\n\n"
    b"********************************\n[Compiling module jit_chunk] Very slow compile? If you "
    b"want to file a bug, run with envvar XLA_FLAGS=--xla_dump_to=/tmp/foo and attach the "
    b"results.\n********************************\n"
)
WRITES = [b"before\n", ALARM, b"bar 10%\r", TOOK, b"E1206 other.cc:1] a real XLA error\n"]
SCRIPT = f"""
import os, sys
from absl import app

def main(argv):
    from resfit_jax.run.runtime import setup_script
    setup_script()
    for chunk in {WRITES!r}:
        os.write(2, chunk)
    print("a warning of the script's own", file=sys.stderr)

app.run(main)
"""


def _stderr(*flags: str) -> str:
    out = subprocess.run([sys.executable, "-c", SCRIPT, *flags], capture_output=True, timeout=120)
    err = out.stderr.decode()  # bytes: keep the progress bar's "\r"
    assert out.returncode == 0, err
    return err


def test_the_slow_compile_alarm_stays_out_of_a_scripts_stderr():
    err = _stderr()
    assert "Very slow compile" not in err and "slow_operation_alarm" not in err
    assert "operation took" not in err
    assert "before\nbar 10%\r" in err
    assert "a real XLA error\n" in err and "a warning of the script's own" in err


def test_verbosity_brings_the_alarm_back():
    err = _stderr("--verbosity=0")
    assert "Very slow compile" in err and "a real XLA error" in err
