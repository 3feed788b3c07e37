"""Helpers shared by the benchmark scripts (scripts/bench_*.py): loopback ports and waiting on
observable state."""
import socket, sys, time


def free_port():
    """A loopback port that nothing listens on now."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def wait(pred, what, within=60, poll=0.02):
    """Polls `pred` until it gives a true value and returns it; exits naming `what` after `within` s."""
    start = time.time()
    while True:
        v = pred()
        if v:
            return v
        if time.time() - start > within:
            sys.exit(f"timed out waiting for {what}")
        time.sleep(poll)
