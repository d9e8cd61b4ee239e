"""How a run's end waits for the processes of its local Ray cluster (no Ray started here)."""

import subprocess
import sys

import psutil

from cdscale.placement import still_running

# A child that forks two grandchildren: one exits at once and is never reaped by its parent (a
# zombie that only that parent could reap, as an actor's worker is once its raylet is gone), the
# other sleeps. It prints both pids and then holds on to them for a minute.
PARENT = """
import os, time
exited = os.fork()
if exited == 0:
    os._exit(0)
sleeping = os.fork()
if sleeping == 0:
    time.sleep(60)
    os._exit(0)
print(exited, sleeping, flush=True)
time.sleep(60)
"""


def test_an_exited_process_that_only_its_own_parent_can_reap_counts_as_ended():
    parent = subprocess.Popen([sys.executable, "-c", PARENT], stdout=subprocess.PIPE, text=True)
    try:
        exited, sleeping = (psutil.Process(int(pid)) for pid in parent.stdout.readline().split())
        assert still_running([exited, sleeping], timeout_s=1) == [sleeping]
        assert exited.status() == psutil.STATUS_ZOMBIE  # not reaped: it was not ours to reap
        sleeping.kill()
        assert still_running([sleeping], timeout_s=30) == []  # killed: its parent does not reap it either
    finally:
        parent.kill()
        parent.wait()
