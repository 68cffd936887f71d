"""A tiny parent for each supervised trader:
`python -I -S shim.py EXIT_FILE LOG_FILE MAX_BYTES BACKUPS -- argv...`.

The daemon may restart while traders keep running; a restarted daemon is not their parent and
cannot learn their exit status. The shim is: it starts the trader, becomes a child subreaper so
forked grandchildren are reaped too, ignores the stop signals aimed at the process group (the
trader handles them), writes the trader's exit code to EXIT_FILE and exits with it. Before it
exits it ends every descendant still alive — SIGTERM, a short grace, SIGKILL — including those
that left the process group or session (as a subreaper, orphans become its own children).

One trader per run dir, by construction: the shim first takes an exclusive flock on
`run_dir/shim.lock` (run_dir = EXIT_FILE's folder) and writes its pid there; the trader inherits
the lock, so it is held while anything of this trader lives. A second shim for the same run dir
exits with BUSY_EXIT (75) without starting anything, and a restarted daemon finds a live shim
by probing the lock.

It also owns the trader's log: the trader's stdout and stderr are a pipe the shim copies into
LOG_FILE, rotating it by size (LOG_FILE.1 .. LOG_FILE.BACKUPS) by rename and reopen — the
trader's handle is the pipe, so rotation never loses a line or disturbs the trader.
Imports are the fewest a Python can run this with, since every trader has its own shim: no
`contextlib`, and `_signal` (the C module `signal` wraps) rather than `signal`, whose `enum`
import alone costs a unique MB per process (see "Supervision overhead" in the README).
"""

# ruff: noqa: SIM105 - try/except/pass on purpose: contextlib costs each shim memory
import _signal as signal  # `signal` without its enum wrappers: same functions, same numbers
import ctypes
import fcntl
import os
import select
import sys
import time

PR_SET_CHILD_SUBREAPER = 36
LEFTOVER_GRACE_S = 5.0
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
LOCK_NAME = "shim.lock"
BUSY_EXIT = 75  # EX_TEMPFAIL: another shim owns this run dir; nothing was started
LOCK_WAIT_S = 0.5  # a daemon probing the lock holds it for microseconds: outwait that


def take_lock(path: str) -> int | None:
    """An exclusive flock on `path` with our pid written in it, or None if another holds it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    deadline = time.monotonic() + LOCK_WAIT_S
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if time.monotonic() > deadline:
                os.close(fd)
                return None
            time.sleep(0.01)
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    os.set_inheritable(fd, True)  # the trader holds it too: the lock lives as long as it does
    return fd


def lock_holder(path: str) -> str:
    """The pid written in a held lock file (for the message)."""
    try:
        with open(path) as fh:
            return fh.read().strip() or "unknown"
    except OSError:
        return "unknown"


def descendants(root: int) -> list[int]:
    """Every live descendant of `root`, from /proc (the shim imports nothing but the stdlib)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as fh:
                stat = fh.read()
        except OSError:
            continue
        fields = stat[stat.rfind(b")") + 2:].split()  # the command name may hold anything
        if fields and fields[0] != b"Z":
            children.setdefault(int(fields[1]), []).append(int(entry))
    found, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def signal_descendants(sig: int) -> None:
    """Signal each descendant by pid: setsid'd ones are in no group we could name."""
    for pid in descendants(os.getpid()):
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def has_children() -> bool:
    """True while the shim has a child, live or not yet reaped. As a subreaper it inherits
    every orphan of the trader, so no child means no descendant: nothing to signal."""
    try:
        os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return False
    return True


class RotatingLog:
    """Append to a file; past max_bytes, shift file -> file.1 -> ... -> file.N and reopen."""

    def __init__(self, path: str, max_bytes: int, backups: int) -> None:
        self.path, self.max_bytes, self.backups = path, max_bytes, backups
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self.size = os.fstat(self.fd).st_size
        self.partial = b""

    def write(self, data: bytes) -> None:
        """Whole lines only: a rotation never splits a line between two files."""
        data, self.partial = self.partial + data, b""
        lines = data.splitlines(keepends=True)
        if lines and not lines[-1].endswith(b"\n"):
            self.partial = lines.pop()
        batch = b""
        for line in lines:
            if self.max_bytes and self.size + len(batch) + len(line) > self.max_bytes and (
                    self.size or batch):
                self._append(batch)
                batch = b""
                self.rotate()
            batch += line
        self._append(batch)

    def flush(self) -> None:
        """Write a last line that never got its newline."""
        data, self.partial = self.partial, b""
        self._append(data)

    def _append(self, data: bytes) -> None:
        if data:
            os.write(self.fd, data)
            self.size += len(data)

    def rotate(self) -> None:
        """Start a new log file, keeping the last backups."""
        os.close(self.fd)
        for i in range(self.backups - 1, 0, -1):
            try:
                os.replace(f"{self.path}.{i}", f"{self.path}.{i + 1}")
            except FileNotFoundError:
                pass
        if self.backups:
            os.replace(self.path, f"{self.path}.1")
        else:
            os.unlink(self.path)
        self.fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self.size = 0


def main(argv: list[str]) -> int:
    """Run the command, record its exit code, pass on signals."""
    if len(argv) < 6 or argv[4] != "--":
        sys.stderr.write("usage: shim.py EXIT_FILE LOG_FILE MAX_BYTES BACKUPS -- COMMAND...\n")
        return 2
    exit_file, log_file, max_bytes, backups, command = (
        argv[0], argv[1], int(argv[2]), int(argv[3]), argv[5:])
    lock_path = os.path.join(os.path.dirname(os.path.abspath(exit_file)), LOCK_NAME)
    if take_lock(lock_path) is None:
        sys.stderr.write(f"pipeline shim: {lock_path} is held by pid {lock_holder(lock_path)}: "
                         "a trader already runs in this run dir; not starting another\n")
        return BUSY_EXIT
    log = RotatingLog(log_file, max_bytes, backups)
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    except (OSError, AttributeError):  # elsewhere init reaps grandchildren
        pass
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    try:
        os.unlink(exit_file)
    except FileNotFoundError:
        pass
    # A child's exit wakes select() at once, through the wakeup fd.
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    out_r, out_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        for sig in STOP_SIGNALS:
            signal.signal(sig, signal.SIG_DFL)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        os.dup2(out_w, 1)
        os.dup2(out_w, 2)
        for fd in (out_r, out_w, wake_r, wake_w):
            os.close(fd)
        try:
            os.chdir(os.environ.pop("PIPELINE_SHIM_CWD", None) or ".")  # the trader's cwd
            os.execvp(command[0], command)
        except OSError as exc:
            os.write(2, f"pipeline shim: cannot start {command[0]!r}: {exc}\n".encode())
            os._exit(127)
    os.close(out_w)
    code, deadline, pipe_open = None, 0.0, True
    while True:
        readable, _, _ = select.select([out_r, wake_r] if pipe_open else [wake_r], [], [],
                                       0.05 if code is not None else 1.0)
        if out_r in readable:
            data = os.read(out_r, 65536)
            if data:
                log.write(data)
            else:
                pipe_open = False
        if wake_r in readable:
            try:
                os.read(wake_r, 512)
            except BlockingIOError:
                pass
        while True:  # reap everything that ended: the trader and any orphans it left
            try:
                child, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                child = -1
                break
            if child == 0:
                break
            if child == pid:
                code = os.waitstatus_to_exitcode(status)
                tmp = exit_file + ".tmp"
                with open(tmp, "w") as fh:
                    fh.write(str(code))
                os.replace(tmp, exit_file)
                deadline = time.monotonic() + LEFTOVER_GRACE_S
                if has_children():  # else skip the /proc walk: the exit is reported sooner
                    signal_descendants(signal.SIGTERM)  # leftovers it forked: ask them to go
        if code is not None:
            if child == -1 and not pipe_open:
                break
            if child == -1 and pipe_open and not select.select([out_r], [], [], 0)[0]:
                break  # nobody is left to write
            if time.monotonic() > deadline:
                log.flush()
                signal_descendants(signal.SIGKILL)  # never the shim itself: it must reap them
    log.flush()
    if code is None:
        return 1
    return code if code >= 0 else 128 - code


if __name__ == "__main__":
    # os._exit: no interpreter teardown, so the supervisor sees the exit within a millisecond.
    os._exit(main(sys.argv[1:]))
