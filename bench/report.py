"""The results: a table on stdout, JSON, and PNG charts (throughput, latency, memory).

Targets are judged here, from numbers measured in the same run, and reported as PASS or MISS;
a missed target never fails the bench (only wrong stream contents or a crash do).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bench import relays, throughput

LABELS = {
    throughput.E2E: "project e2e (celery worker)",
    throughput.IN_PROCESS: "project in-process",
    relays.IDEAL: "ideal relay",
    relays.PER_ROW: "per-row relay",
}
DISPATCH_INTERVAL_MS = 1000.0
SATURATED_IDLE_PCT = 10  # a latency run with less idle CPU than this had a saturated machine


def saturated(mode: dict[str, Any]) -> bool:
    """Whether the machine was saturated during a latency mode's run."""
    return bool(mode["cpu_idle_pct"] < SATURATED_IDLE_PCT)


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Judge each target of the issue that the run has the numbers for."""
    out: list[dict[str, Any]] = []
    deep = results.get("deep", {}).get("implementations", {})
    wide = results.get("wide", {}).get("implementations", {})
    if throughput.E2E in deep and relays.IDEAL in deep:
        value = deep[throughput.E2E]["vs_ideal"]
        out.append(_target("deep", "e2e >= 0.70x ideal relay", value, value >= 0.70, "x"))
    if throughput.E2E in wide and throughput.E2E in deep:
        value = round(
            wide[throughput.E2E]["events_per_s"] / deep[throughput.E2E]["events_per_s"], 3
        )
        out.append(_target("wide", "e2e >= 0.50x deep e2e", value, value >= 0.50, "x"))
    modes = results.get("latency", {}).get("modes", {})
    # The kick's target holds "with the machine not saturated": judged on the fastest kick run
    # that left the machine some idle time (or, if none did, on the full-rate one: a miss).
    kicks = [mode for mode in ("kick", "kick-light") if "p99_ms" in modes.get(mode, {})]
    calm = [mode for mode in kicks if not saturated(modes[mode])]
    for mode in calm[:1] or kicks[:1]:
        value = modes[mode]["p99_ms"]
        ok = value <= 50 and mode in calm
        out.append(_target("latency", f"{mode} p99 <= 50 ms, not saturated", value, ok, " ms"))
    if "p99_ms" in modes.get("beat", {}):
        value = modes["beat"]["p99_ms"]
        limit = DISPATCH_INTERVAL_MS + 50
        out.append(_target("latency", f"beat p99 <= {limit:.0f} ms", value, value <= limit, " ms"))
    history = results.get("history")
    if history:
        for what in ("dispatch", "drain"):
            value = history[f"{what}_ratio"]
            out.append(_target("history", f"{what} <= 1.2x no history", value, value <= 1.2, "x"))
    memory = results.get("memory")
    if memory:
        value = memory["ratio"]
        out.append(_target("memory", "peak RSS <= 1.2x at 10k", value, value <= 1.2, "x"))
    return out


def _target(workload: str, target: str, value: float, ok: bool, unit: str) -> dict[str, Any]:
    return {"workload": workload, "target": target, "value": value, "unit": unit, "pass": ok}


def table(results: dict[str, Any], judged: list[dict[str, Any]]) -> str:
    """The human-readable table: one row per implementation or measure, targets judged."""
    verdicts: dict[tuple[str, str], dict[str, Any]] = {}
    for t in judged:
        verdicts[(t["workload"], t["target"].split(" ", 1)[0])] = t
    rows: list[tuple[str, ...]] = [
        (
            "workload",
            "implementation / measure",
            "events/s",
            "vs ideal",
            "vs per-row",
            "CPU us/ev app+pg+redis",
            "target",
            "measured",
            "result",
        )
    ]

    def judged_cells(workload: str, key: str) -> tuple[str, str, str]:
        t = verdicts.get((workload, key))
        if t is None:
            return "", "", ""
        target = t["target"].split(" ", 1)[1]
        value = f"{t['value']:.3f}x" if t["unit"] == "x" else f"{t['value']:,.1f}{t['unit']}"
        return target, value, "PASS" if t["pass"] else "MISS"

    for workload in ("deep", "wide"):
        if workload not in results:
            continue
        data = results[workload]
        for index, (impl, r) in enumerate(data["implementations"].items()):
            label = LABELS[impl] + (" [time-capped]" if r["capped"] else "")
            cpu = r.get("cpu_us_per_event", {})
            rows.append(
                (
                    f"{workload} {data['runs']}x{data['events_per_run']}" if index == 0 else "",
                    label,
                    f"{r['events_per_s']:,.0f}",
                    f"{r['vs_ideal']:.2f}x",
                    f"{r['vs_per_row']:.1f}x",
                    "+".join(f"{cpu[k]:.0f}" for k in ("client", "postgres", "redis") if k in cpu),
                    *(judged_cells(workload, "e2e") if impl == throughput.E2E else ("", "", "")),
                )
            )
    latency = results.get("latency")
    if latency:
        for index, (mode, r) in enumerate(latency["modes"].items()):
            if "skipped" in r:
                text = f"{mode}: skipped ({r['skipped']})"
            else:
                text = (
                    f"{mode} at {r['target_rate']:,.0f}/s: p50 {r['p50_ms']:,.1f} ms, "
                    f"p99 {r['p99_ms']:,.1f} ms, max {r['max_ms']:,.1f} ms"
                    + (", saturated" if saturated(r) else "")
                )
            workload = "latency" if index == 0 else ""
            rows.append((workload, text, "", "", "", "", *judged_cells("latency", mode)))
    history = results.get("history")
    if history:
        for index, what in enumerate(("dispatch", "drain")):
            text = (
                f"{what}: {history['none'][f'{what}_ms']:.2f} ms -> "
                f"{history['history'][f'{what}_ms']:.2f} ms with history"
            )
            workload = "history" if index == 0 else ""
            rows.append((workload, text, "", "", "", "", *judged_cells("history", what)))
    memory = results.get("memory")
    if memory:
        text = (
            f"pool RSS {memory['baseline_rss_mib']:.1f} MiB at {memory['baseline_events']:,} "
            f"events, peak {memory['peak_rss_mib']:.1f} MiB"
        )
        rows.append(
            (
                "memory",
                text,
                f"{memory['events_per_s']:,.0f}",
                "",
                "",
                "",
                *judged_cells("memory", "peak"),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    right = {2, 3, 4, 5, 7}
    lines = []
    for n, row in enumerate(rows):
        cells = [
            cell.rjust(width) if i in right else cell.ljust(width)
            for i, (cell, width) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def notes(results: dict[str, Any], descriptions: dict[str, str]) -> str:
    """What the table's rows mean, and the conditions they were measured under."""
    meta = results["meta"]
    lines = [
        (
            f"Same data, same machine ({meta['machine']['cpus']} CPUs), implementations "
            f"interleaved, median of {meta['reps']} repetitions:"
        )
    ]
    lines += [f"  {LABELS[impl]}: {text}" for impl, text in descriptions.items()]
    for workload in ("deep", "wide"):
        per_row = results.get(workload, {}).get("implementations", {}).get(relays.PER_ROW, {})
        if per_row.get("capped"):
            lines.append(
                f"  {workload}: per-row stopped at its {meta['sizes']['per_row_seconds']:.0f}s "
                "budget per repetition; its rate is over the events it moved"
            )
    for workload in ("deep", "wide"):
        impls = results.get(workload, {}).get("implementations", {})
        dropped = {impl: len(r["discarded"]) for impl, r in impls.items() if r.get("discarded")}
        if dropped:
            lines.append(
                f"  {workload}: repeated because another program loaded the machine meanwhile: "
                + ", ".join(f"{LABELS[impl]} x{n}" for impl, n in dropped.items())
            )
    latency = results.get("latency")
    if latency:
        lines.append(
            f"Latency: {latency['runs']} runs, producers {latency['producers']}, one event per "
            "transaction via append_event; worker + beat (dispatch every 1 s); the stamp is taken "
            "just before append_event, so latency includes the producer's INSERT and COMMIT; "
            f"consumers {latency.get('consumers', '1 process')}."
        )
        for mode, r in latency["modes"].items():
            if "skipped" in r:
                continue
            lines.append(
                f"  {mode}: {r['events']:,} events, {r['achieved_rate']:,.0f} of "
                f"{r['target_rate']:,.0f}/s achieved ({r['skipped_events']:,} not produced in "
                f"time); producer append+commit p50 {r['producer_append_commit_p50_ms']:.1f} ms"
            )
            lines.append(
                f"    cores busy: producers {r['cores_producers']:.2f}, workers+beat "
                f"{r['cores_workers']:.2f}, postgres {r['cores_postgres']:.2f}, redis "
                f"{r['cores_redis']:.2f}, consumer {r['cores_consumer']:.2f}, whole machine "
                f"{r['cores_machine']:.2f} of {meta['machine']['cpus']}"
                + (" (saturated)" if saturated(r) else "")
            )
    history = results.get("history")
    if history:
        lines.append(
            f"History: {history['pending_events']:,} pending events in {history['pending_runs']} "
            f"runs; with history = plus {history['published_events']:,} published events; "
            f"medians of {history['reps']}."
        )
    memory = results.get("memory")
    if memory:
        lines.append(
            f"Memory: {memory['worker']}, {memory['events']:,} events in {memory['runs']} runs; "
            f"VmHWM {memory['vm_hwm_mib']:.1f} MiB."
        )
    if meta["mode"] == "quick":
        lines.append(
            "--quick is a smoke test: its timings last fractions of a second, so its ratios and "
            "PASS/MISS are noise; judge the targets on the full size."
        )
    return "\n".join(lines)


def write_json(path: Path, results: dict[str, Any]) -> None:
    """Write the results (without the raw latency samples) as JSON."""
    path.write_text(json.dumps(results, indent=2, default=str) + "\n")


def write_charts(out: Path, results: dict[str, Any], samples: dict[str, list[float]]) -> list[Path]:
    """Write the PNG charts; return their paths."""
    import matplotlib

    matplotlib.use("Agg")  # no display: files only
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    written: list[Path] = []
    workloads = [w for w in ("deep", "wide") if w in results]
    if workloads:
        fig, ax = plt.subplots(figsize=(9, 5))
        impls = list(LABELS)
        width = 0.8 / len(impls)
        for i, impl in enumerate(impls):
            values = [
                results[w]["implementations"].get(impl, {}).get("events_per_s", 0.0)
                for w in workloads
            ]
            xs = [j + (i - (len(impls) - 1) / 2) * width for j in range(len(workloads))]
            bars = ax.bar(xs, values, width, label=LABELS[impl])
            ax.bar_label(bars, labels=[f"{v:,.0f}" for v in values], fontsize=8)
        ax.set_xticks(range(len(workloads)))
        ax.set_xticklabels(
            [
                f"{w} ({results[w]['runs']:,} runs x {results[w]['events_per_run']:,})"
                for w in workloads
            ]
        )
        ax.set_yscale("log")
        ax.set_ylabel("events/s (median, log scale)")
        ax.set_title("Outbox drain throughput, same data, same machine")
        ax.legend(loc="lower right", fontsize=8)
        fig.tight_layout()
        written.append(_save(fig, out / "throughput.png"))
        plt.close(fig)
    if samples:
        fig, (hist, cdf) = plt.subplots(1, 2, figsize=(12, 5))
        for mode, values in samples.items():
            ms = [max(v * 1000, 0.01) for v in values]
            low, high = min(ms), max(ms)
            bins = [low * (high / low) ** (k / 60) for k in range(61)] if high > low else 60
            hist.hist(ms, bins=bins, histtype="step", label=mode)
            cdf.plot(sorted(ms), [(k + 1) / len(ms) for k in range(len(ms))], label=mode)
        for axis in (hist, cdf):
            axis.set_xscale("log")
            axis.set_xlabel("commit-to-stream latency (ms, log scale)")
            axis.axvline(50, color="grey", linestyle=":", linewidth=1)
            axis.axvline(DISPATCH_INTERVAL_MS + 50, color="grey", linestyle="--", linewidth=1)
            axis.legend()
        hist.set_ylabel("events")
        cdf.set_ylabel("fraction of events")
        cdf.axhline(0.99, color="grey", linestyle=":", linewidth=1)
        fig.suptitle("Steady latency (targets: kick p99 50 ms, beat p99 1,050 ms)")
        fig.tight_layout()
        written.append(_save(fig, out / "latency.png"))
        plt.close(fig)
    memory = results.get("memory")
    if memory and memory["samples"]:
        fig, ax = plt.subplots(figsize=(9, 4))
        ax.plot(
            [s["published"] for s in memory["samples"]], [s["rss_mib"] for s in memory["samples"]]
        )
        ax.axhline(memory["baseline_rss_mib"] * 1.2, color="grey", linestyle="--", linewidth=1)
        ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _pos: f"{value:,.0f}"))
        ax.set_xlabel("events published")
        ax.set_ylabel("pool process RSS (MiB)")
        ax.set_ylim(bottom=0)
        ax.set_title("Worker memory while draining (dashed: 1.2x the RSS at 10,000 events)")
        fig.tight_layout()
        written.append(_save(fig, out / "memory.png"))
        plt.close(fig)
    return written


def _save(fig: Any, path: Path) -> Path:
    fig.savefig(path, dpi=110)
    return path
