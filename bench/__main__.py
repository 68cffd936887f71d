"""Run every benchmark, or the ones named: `python -m bench cli growth`; QUICK=1 for a smoke run.

Writes bench/results.json (every case: median, spread, the peer's figure from the same run, the
ratio, the target and whether it is met) and prints one table.
"""

from __future__ import annotations

import importlib
import json
import os
import platform
import sys
import time
import traceback

from bench.common import CASES, ON_CASE, QUICK, RESULTS_JSON, fmt

# BENCH_APPEND=1: keep the cases of the benchmarks not run now from the last results.json.
KEPT: list[dict] = []
ALL = ["growth", "cli", "supervision", "engine", "discovery", "backtest"]


def machine() -> dict[str, object]:
    """What the figures were measured on."""
    model = "unknown"
    try:
        with open("/proc/cpuinfo") as fh:
            model = next(line.split(":", 1)[1].strip() for line in fh
                         if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": model, "cores": os.cpu_count(), "python": platform.python_version(),
            "system": f"{platform.system()} {platform.release()}",
            "loadavg_at_start": os.getloadavg()[0]}


def table() -> str:
    """The results as a plain-text table."""
    lines = [f"{'case':<62}{'ours':>14}{'peer':>14}{'ratio':>8}  target"]
    for c in CASES:
        ratio = f"{c.ratio:.1f}x" if c.ratio is not None else "-"
        target = "-" if c.target is None else (
            f"{'<=' if c.lower_is_better else '>='} {fmt(c.target, c.unit)}: "
            f"{'met' if c.met else 'NOT met'}")
        lines.append(f"{(c.group + ': ' + c.name)[:61]:<62}{fmt(c.figure, c.unit):>14}"
                     f"{fmt(c.peer_figure, c.unit):>14}{ratio:>8}  {target}")
    return "\n".join(lines)


def save(names: list[str], started: float, info: dict, failed: dict[str, str]) -> dict:
    """Write results.json with every case so far (after each benchmark: nothing is lost)."""
    info["loadavg_at_end"] = os.getloadavg()[0]
    payload = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(started)),
        "seconds": round(time.time() - started, 1),
        "quick": QUICK,
        "machine": info,
        "benchmarks": names,
        "failed": failed,
        "cases": KEPT + [c.as_json() for c in CASES],
    }
    RESULTS_JSON.write_text(json.dumps(payload, indent=1, default=str) + "\n")
    return payload


def main() -> None:
    names = to_run = sys.argv[1:] or ALL
    started = time.time()
    info = machine()
    failed: dict[str, str] = {}
    payload: dict = {}
    if os.environ.get("BENCH_APPEND") and RESULTS_JSON.exists():
        last = json.loads(RESULTS_JSON.read_text())
        KEPT.extend(c for c in last["cases"] if c["group"] not in names)
        started, info = time.time() - last["seconds"], last["machine"]
        failed.update({k: v for k, v in last["failed"].items() if k not in names})
        names = [*last["benchmarks"], *(n for n in names if n not in last["benchmarks"])]
    ON_CASE.append(lambda: save(names, started, info, failed))
    for name in to_run:
        print(f"== {name} ==", flush=True)
        try:
            importlib.import_module(f"bench.{name}").run()
        except Exception:  # one broken case must not lose the others' figures
            failed[name] = traceback.format_exc(limit=3)
            print(failed[name], file=sys.stderr)
        payload = save(names, started, info, failed)
    print()
    print(table())
    print(f"\n{len(CASES)} cases in {payload['seconds']} s -> {RESULTS_JSON}")
    if failed:
        sys.exit(f"failed: {', '.join(failed)}")


main()
