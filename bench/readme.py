"""Rewrite README.md's Benchmarks table from bench/results.json: `python -m bench.readme`."""

from __future__ import annotations

import json

from bench.common import RESULTS_JSON, ROOT, fmt

START, END = "<!-- bench:start -->", "<!-- bench:end -->"


def section(results: dict) -> str:
    """The generated Markdown between the markers."""
    machine = results["machine"]
    busy = max(machine["loadavg_at_start"], machine["loadavg_at_end"]) >= 1.0
    load = "under load from other work on the machine" if busy else "on a quiet machine"
    lines = [
        START,
        f"Measured {results['date']} on {machine['cpu']} ({machine['cores']} cores, Python "
        f"{machine['python']}), {load} (load average "
        f"{machine['loadavg_at_start']:.1f} at the start, {machine['loadavg_at_end']:.1f} at "
        f"the end){' — QUICK smoke run, small sizes' if results['quick'] else ''}; "
        f"the run took {results['seconds'] / 60:.1f} min. Figures are medians over the "
        "repeats shown; the peer ran in the same run.",
        "",
        "| case | pipeline_v2 | repeats (min..max) | peer | ratio | target |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for c in results["cases"]:
        low, high = c["spread"]
        peer = ("-" if c["peer_figure"] is None
                else f"{fmt(c['peer_figure'], c['unit'])} ({c['peer']})")
        ratio = "-" if c["ratio"] is None else f"{c['ratio']:.2f}x"
        target = "-" if c["target"] is None else (
            f"{'<=' if c['lower_is_better'] else '>='} {fmt(c['target'], c['unit'])}: "
            f"{'met' if c['met'] else '**not met**'}")
        lines.append(f"| {c['group']}: {c['name']} | {fmt(c['figure'], c['unit'])} | "
                     f"{c['repeats']} ({fmt(low, c['unit'])}..{fmt(high, c['unit'])}) | {peer} | "
                     f"{ratio} | {target} |")
    if results.get("notes"):
        lines += ["", str(results["notes"])]
    if results.get("failed"):
        lines += ["", f"Failed in that run: {', '.join(results['failed'])}."]
    return "\n".join([*lines, END])


def main() -> None:
    readme = ROOT / "README.md"
    text = readme.read_text()
    if START not in text or END not in text:
        raise SystemExit(f"README.md: no {START} ... {END} markers to rewrite between")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    generated = section(json.loads(RESULTS_JSON.read_text()))
    readme.write_text(head + generated + tail)
    print(f"README.md: Benchmarks rewritten from {RESULTS_JSON.name}")


if __name__ == "__main__":
    main()
