"""Run a module or code string and report this process's peak RSS (VmHWM) on exit.

`python bench/peak.py OUTFILE -m module args...` or `python bench/peak.py OUTFILE -c CODE`.
VmHWM belongs to the address space created at exec, so a parent's memory never inflates it.
"""

from __future__ import annotations

import atexit
import runpy
import sys


def _write_peak(path: str) -> None:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                with open(path, "w") as out:
                    out.write(str(int(line.split()[1]) / 1024))


out_file, mode, target, *rest = sys.argv[1:]
atexit.register(_write_peak, out_file)
sys.argv = [target, *rest]
if mode == "-m":
    runpy.run_module(target, run_name="__main__", alter_sys=True)
else:
    exec(compile(target, "<bench>", "exec"), {"__name__": "__main__"})
