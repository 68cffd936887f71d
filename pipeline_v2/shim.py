"""A tiny parent for each supervised trader: `python -I -S shim.py EXIT_FILE -- argv...`.

The daemon may restart while traders keep running; a restarted daemon is not their parent and
cannot learn their exit status. The shim is: it starts the trader, becomes a child subreaper so
forked grandchildren are reaped too, ignores the stop signals aimed at the process group (the
trader handles them), writes the trader's exit code to EXIT_FILE and exits with it. Imports are
kept to the minimum so each shim costs a few MB.
"""

import contextlib
import ctypes
import os
import signal
import sys
import time

PR_SET_CHILD_SUBREAPER = 36
LEFTOVER_GRACE_S = 5.0


def _exit_code(status: int) -> int:
    return os.waitstatus_to_exitcode(status)


def main(argv: list[str]) -> int:
    exit_file, sep, command = argv[0], argv[1], argv[2:]
    if sep != "--" or not command:
        print("usage: python -I -S shim.py EXIT_FILE -- COMMAND...", file=sys.stderr)
        return 2
    with contextlib.suppress(OSError, AttributeError):  # elsewhere init reaps grandchildren
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(exit_file)
    pid = os.fork()
    if pid == 0:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, signal.SIG_DFL)
        try:
            os.execvp(command[0], command)
        except OSError as exc:
            print(f"pipeline shim: cannot start {command[0]!r}: {exc}", file=sys.stderr)
            os._exit(127)
    code = None
    deadline = None
    while True:
        try:
            child, status = os.waitpid(-1, os.WNOHANG if code is not None else 0)
        except ChildProcessError:
            break
        if child == pid:
            code = _exit_code(status)
            tmp = exit_file + ".tmp"
            with open(tmp, "w") as fh:
                fh.write(str(code))
            os.replace(tmp, exit_file)
            deadline = time.monotonic() + LEFTOVER_GRACE_S
            os.killpg(0, signal.SIGTERM)  # leftovers the trader forked: ask them to go
        elif child == 0:  # leftovers still running after the trader exited
            if time.monotonic() > deadline:
                os.killpg(0, signal.SIGKILL)
            time.sleep(0.05)
    if code is None:
        return 1
    return code if code >= 0 else 128 - code


if __name__ == "__main__":
    # os._exit: no interpreter teardown, so the supervisor sees the exit within a millisecond.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(main(sys.argv[1:]))
