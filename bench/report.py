"""The results as a markdown table (three designs side by side, then S6's steps) and a latency plot."""

from pathlib import Path

COLUMNS = ("service", "polling", "broadcaster")
ROWS = [
    ("S1", "latency p50 (ms)", "p50_ms"),
    ("S1", "latency p99 (ms)", "p99_ms"),
    ("S1", "commit -> that value or newer visible, p99 (ms)", "visible_p99_ms"),
    ("S1", "lost", "lost"),
    ("S1", "coalesced (newer state sent instead)", "coalesced"),
    ("S1", "commit round trip p50 / p99 (ms)", ("commit_rtt_p50_ms", "commit_rtt_p99_ms")),
    ("S1", "server queries per update", "server_queries_per_update"),
    ("S2", "sockets", "sockets"),
    ("S2", "commit -> arrival p50 (ms)", "p50_ms"),
    ("S2", "commit -> last socket served (ms)", "max_ms"),
    ("S2", "lost", "lost"),
    ("S3", "ceiling, no subscribers, median pair (commits/s)", "ceiling_per_s"),
    ("S3", "committed as fast as it commits, median pair (/s)", "committed_per_s"),
    ("S3", "delivered, median pair (/s)", "delivered_per_s"),
    ("S3", "delivered / ceiling, median pair", "delivered_fraction_of_ceiling"),
    ("S3", "delivered / ceiling, each pair", "pair_fractions"),
    ("S3", "ceiling with no server, nobody LISTENing: mean of before and after (commits/s)",
     "ceiling_nobody_listening_per_s"),
    ("S3", "the same, before / after", "ceiling_nobody_listening_before_after"),
    ("S3", "delivered, median pair / that ceiling", "delivered_fraction_of_ceiling_nobody_listening"),
    ("S3", "p99 as fast as it commits, worst pair (ms)", "p99_ms"),
    ("S3", "highest step meeting p99<=50ms, no loss (/s)", "sustained_per_s"),
    ("S3", "lost / reordered", ("lost", "reordered")),
    ("S3", "busiest process, median pair", "busiest_process_at_top"),
    ("S3", "writers' backends waiting on (% of samples), median pair's ceiling", "writer_waits_at_ceiling"),
    ("S3", "the same, flat out with subscribers", "writer_waits_at_top"),
    ("S3", "threads waiting for a core, on average, median pair's ceiling", "waiting_for_core_at_ceiling"),
    ("S3", "the same, flat out with subscribers", "waiting_for_core_at_top"),
    ("S4", "sockets", "sockets"),
    ("S4", "database queries/s while idle", "queries_per_s"),
    ("S4", "server memory per socket (KiB)", "kib_per_socket"),
    ("S5", "sockets", "sockets"),
    ("S5", "all caught up after reconnect (s)", "caught_up_s"),
    ("S5", "missed / repeated", ("missed", "repeated")),
]
# S6 (the service only: the baselines have no feed), one row per step: (column, key in the step).
S6_COLUMNS = [
    ("feed sockets", "feed_sockets"),
    ("per user", "sockets_per_user"),
    ("changes/s", "changes_per_s"),
    ("delivered/s", "delivered_per_s"),
    ("p50 (ms)", "p50_ms"),
    ("p99 (ms)", "p99_ms"),
    ("max (ms)", "max_ms"),
    ("target p99 (ms)", "target_p99_ms"),
    ("met", "target_met"),
    ("coalesced (a newer status sent instead)", "coalesced"),
    ("lost / reordered / not the owner's", ("lost", "reordered", "violations")),
    ("server CPU (% of a core)", "server_cpu_percent"),
    ("other tenants' CPU (% of a core)", "others_cpu_percent"),
    ("statements per change", "statements_per_change"),
]


def _cell(figures: dict, key) -> str:
    if "not_applicable" in figures:
        return "n/a"
    if "error" in figures and not any(k in figures for k in (key if isinstance(key, tuple) else (key,))):
        return "error"
    if isinstance(key, tuple):
        return " / ".join(_cell(figures, k) for k in key)
    value = figures.get(key)
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, dict):  # figures by name, in the order given: the first four
        shown = ", ".join(f"{name} {_cell(value, name)}" for name in list(value)[:4])
        return shown + (", ..." if len(value) > 4 else "") if value else "-"
    if isinstance(value, list):
        return ", ".join(_cell({key: v}, key) for v in value)
    if isinstance(value, float):
        return f"{value:,.3f}".rstrip("0").rstrip(".") if abs(value) < 10 else f"{value:,.1f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def markdown(report: dict) -> str:
    m = report["machine"]
    lines = [
        f"# aiagent-live bench ({m['mode']} run, {m['date']})", "",
        f"{m['cores']} cores ({m['cpu']}), {m['memory_gib']} GiB, Python {m['python']}, {m['postgres']}, "
        f"service at {m['git_commit']}{' (uncommitted changes)' if m['service_tree_dirty'] else ''}"
        f"{_other_tree(m)}; run took {m['duration_s']} s. Clients and writers run on the same machine.", "",
    ]
    rows = []
    for scenario, label, key in ROWS:
        if scenario not in report:
            continue
        designs = report[scenario]["designs"]
        cells = [_cell(designs[d], key) if d in designs else "n/a" for d in COLUMNS]
        rows.append(f"| {scenario} | {label} | " + " | ".join(cells) + " |")
    if rows:  # none when only S6 ran
        lines += ["| scenario | figure | " + " | ".join(COLUMNS) + " |",
                  "| --- | --- | " + " | ".join("---:" for _ in COLUMNS) + " |", *rows, ""]
    lines += s6_table(report)
    ratio_lines = []
    for scenario in ("S1", "S2", "S3", "S4", "S5"):
        r = report.get(scenario, {}).get("ratios")
        if r:
            ratio_lines.append(f"- {scenario}: " + ", ".join(f"{k} x{v}" for k, v in r.items()))
    if ratio_lines:
        lines += ["Ratios, baseline / service (above 1: the service is better; for S3's delivered_per_s and "
                  "delivered_fraction_of_ceiling, below 1 is better):", "", *ratio_lines, ""]
    return "\n".join(lines)


def _other_tree(machine: dict) -> str:
    """Where the measured service came from, when not from the bench's own checkout (--service-tree)."""
    tree = machine.get("service_tree")
    if tree is None or Path(tree) == Path(__file__).resolve().parent.parent:
        return ""
    return f" from {tree} (bench at {machine.get('bench_commit')})"


def s6_table(report: dict) -> list[str]:
    """S6's steps, one row each, under the issue's targets."""
    if "S6" not in report:
        return []
    ours = report["S6"]["designs"].get("service")
    if ours is None:
        return []
    lines = [f"S6, the list views: executions-feed sockets on /api/v1/ws (the service only; the baselines "
             f"have no feed), spread evenly over {ours.get('users', '-')} users; a writer at "
             f"{_cell(ours, 'rate_per_s')} changes/s round-robin over their {_cell(ours, 'executions')} "
             f"executions for {_cell(ours, 'seconds')} s a step. Latency is commit -> arrival per delivered "
             "feed message. Targets (issue 13): 1,000 feed sockets p99 <= 10 ms, 5,000 <= 50 ms; 0 lost, "
             "reordered or delivered to a socket of another user.", ""]
    if "steps" not in ours:
        return lines + [f"S6: {_cell(ours, 'steps')}", ""]
    lines += ["| " + " | ".join(label for label, _ in S6_COLUMNS) + " |",
              "| " + " | ".join("---:" for _ in S6_COLUMNS) + " |"]
    for step in ours["steps"]:
        cpu = step.get("cpu_percent", {})
        figures = {**step, "server_cpu_percent": cpu.get("server"), "others_cpu_percent": cpu.get("others")}
        lines.append("| " + " | ".join(_cell(figures, key) for _, key in S6_COLUMNS) + " |")
    return lines + [""]


def plot(curves: dict, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(k, t) for k, t in (("S1", "S1: commit -> arrival, per message"),
                                  ("S1_visible", "S1: commit -> that value or newer visible"),
                                  ("S2", "S2: commit -> arrival, fan-out to one execution"),
                                  ("S6", "S6: commit -> arrival on executions-feed sockets"))
              if curves.get(k)]
    if not panels:
        return
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.2), squeeze=False)
    colors = {"service": "tab:green", "polling": "tab:red", "broadcaster": "tab:blue"}
    for ax, (key, label) in zip(axes[0], panels):
        for design, values in curves[key].items():
            if not values:
                continue
            xs = sorted(max(v * 1000, 0.01) for v in values)
            ys = [(i + 1) / len(xs) for i in range(len(xs))]
            ax.plot(xs, ys, label=f"{design} (n={len(xs):,})", color=colors.get(design))
        ax.set_xscale("log")
        ax.set_xlabel("milliseconds (log)")
        ax.set_ylabel("fraction of messages")
        ax.set_title(label, fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
