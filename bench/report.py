"""The results as markdown (the designs side by side, issue 13's targets for the wal source, S6's
steps, S7's decoding cost) and a latency plot."""

from pathlib import Path

COLUMNS = ("service", "service_wal", "service_standby", "polling", "broadcaster")
HEADERS = {"service": "service (notify)", "service_wal": "service_wal", "service_standby": "service_standby"}
# (scenario, label, key[, how many entries of a dict to show: 4 unless said])
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
    ("S3", "ceiling, each pair (commits/s)", "pair_ceilings_per_s"),
    ("S3", "ceiling with the announcement removed, each pair (commits/s)", "pair_ceilings_unannounced_per_s"),
    ("S3", "ceiling / ceiling with the announcement removed, each pair", "pair_ceiling_over_unannounced"),
    ("S3", "the same, median pair", "ceiling_over_unannounced"),
    ("S3", "committed flat out with subscribers / announcement removed, median pair", "committed_over_unannounced"),
    ("S3", "announcement removed and no server: before / after (commits/s)",
     "ceiling_unannounced_no_server_before_after"),
    ("S3", "ceiling, median of the pairs / that (mean of before and after)",
     "ceiling_median_over_unannounced_no_server"),
    ("S3", "committed as fast as it commits, median pair (/s)", "committed_per_s"),
    ("S3", "delivered, median pair (/s)", "delivered_per_s"),
    ("S3", "delivered / ceiling, median pair", "delivered_fraction_of_ceiling"),
    ("S3", "delivered / ceiling, each pair", "pair_fractions"),
    ("S3", "delivered / committed flat out, median pair", "delivered_fraction_of_committed"),
    ("S3", "ceiling with no server, nobody LISTENing: mean of before and after (commits/s)",
     "ceiling_nobody_listening_per_s"),
    ("S3", "the same, before / after", "ceiling_nobody_listening_before_after"),
    ("S3", "delivered, median pair / that ceiling", "delivered_fraction_of_ceiling_nobody_listening"),
    ("S3", "p99 as fast as it commits, worst pair (ms)", "p99_ms"),
    ("S3", "highest step meeting p99<=50ms, no loss (/s)", "sustained_per_s"),
    ("S3", "lost / reordered", ("lost", "reordered")),
    ("S3", "busiest process, median pair", "busiest_process_at_top"),
    ("S3", "CPU per group (% of a core), median pair's ceiling", "cpu_at_ceiling", 9),
    ("S3", "the same, announcement removed", "cpu_at_unannounced", 9),
    ("S3", "the same, flat out with subscribers", "cpu_at_top", 9),
    ("S3", "writers' backends waiting on (% of samples), median pair's ceiling", "writer_waits_at_ceiling"),
    ("S3", "the same, announcement removed", "writer_waits_at_unannounced"),
    ("S3", "the same, flat out with subscribers", "writer_waits_at_top"),
    ("S3", "threads waiting for a core, on average, median pair's ceiling", "waiting_for_core_at_ceiling", 9),
    ("S3", "the same, announcement removed", "waiting_for_core_at_unannounced", 9),
    ("S3", "the same, flat out with subscribers", "waiting_for_core_at_top", 9),
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


def _cell(figures: dict, key, entries: int = 4) -> str:
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
    if isinstance(value, dict):  # figures by name, in the order given: the first `entries`
        shown = ", ".join(f"{name} {_cell(value, name)}" for name in list(value)[:entries])
        return shown + (", ..." if len(value) > entries else "") if value else "-"
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
        f"{_other_tree(m)}; run took {m['duration_s']} s. Clients and writers run on the same machine.",
        *_stalls(m), "",
    ]
    ran = {d for scenario in report.values() if isinstance(scenario, dict)
           for d in scenario.get("designs", {})}
    columns = [d for d in COLUMNS if d in ran]
    rows = []
    for scenario, label, key, *entries in ROWS:
        if scenario not in report:
            continue
        designs = report[scenario]["designs"]
        cells = [_cell(designs[d], key, *entries) if d in designs else "n/a" for d in columns]
        if all(cell in ("-", "n/a") for cell in cells):
            continue  # e.g. the announcement-removed rows in a run without the service
        rows.append(f"| {scenario} | {label} | " + " | ".join(cells) + " |")
    if rows:  # none when only S6 or S7 ran
        lines += ["| scenario | figure | " + " | ".join(HEADERS.get(d, d) for d in columns) + " |",
                  "| --- | --- | " + " | ".join("---:" for _ in columns) + " |", *rows, ""]
    lines += targets_table(report)
    lines += s6_table(report)
    lines += s7_table(report)
    ratio_lines = []
    for scenario in ("S1", "S2", "S3", "S4", "S5", "S6"):
        r = report.get(scenario, {}).get("wal_vs_notify")
        if r:
            ratio_lines.append(f"- {scenario}: " + ", ".join(f"{k} x{_cell(r, k)}" for k in r))
    if ratio_lines:
        lines += ["Ratios, wal against notify (above 1 favours wal: notify / wal for times and costs, wal / "
                  "notify for rates; `standby_*`: decoding on the primary / on the standby):", "", *ratio_lines, ""]
    ratio_lines = []
    for scenario in ("S1", "S2", "S3", "S4", "S5"):
        r = report.get(scenario, {}).get("ratios")
        if r:
            ratio_lines.append(f"- {scenario}: " + ", ".join(f"{k} x{v}" for k, v in r.items()))
    if ratio_lines:
        lines += ["Ratios, baseline / service (notify) (above 1: the service is better; for S3's delivered_per_s "
                  "and delivered_fraction_of_ceiling, below 1 is better):", "", *ratio_lines, ""]
    return "\n".join(lines)


def targets_table(report: dict) -> list[str]:
    """Issue 13's targets for the wal source: what this run measured, met or not."""
    rows = report.get("wal_targets") or []
    if not rows:
        return []
    lines = ["Issue 13's targets for the wal source, from this run:", "",
             "| target | limit | measured | met |", "| --- | ---: | ---: | ---: |"]
    for row in rows:
        met = {True: "yes", False: "**no**", None: "-"}[row["met"]]
        lines.append(f"| {row['target']} | {row['limit']} | {_cell(row, 'measured')} | {met} |")
    return lines + [""]


# S7, one row per instance count: (column, phase, key in the phase).
S7_COLUMNS = [
    ("commits/s", "paced", "committed_per_s"),
    ("walsenders' CPU (% of a core)", "paced", "walsender_cpu_percent"),
    ("per instance", "paced", "walsender_cpu_percent_per_instance"),
    ("per 1,000 commits (CPU ms)", "paced", "walsender_cpu_ms_per_1000_commits"),
    ("service CPU per instance (%)", "paced", "server_cpu_percent_per_instance"),
    ("flat out: commits/s", "flat_out", "committed_per_s"),
    ("walsenders' CPU (%)", "flat_out", "walsender_cpu_percent"),
    ("per instance", "flat_out", "walsender_cpu_percent_per_instance"),
    ("per 1,000 commits (ms)", "flat_out", "walsender_cpu_ms_per_1000_commits"),
]


def s7_table(report: dict) -> list[str]:
    """S7: what decoding costs the primary, per service instance decoding there."""
    ours = report.get("S7", {}).get("designs", {}).get("service_wal")
    if not ours:
        return []
    if "steps" not in ours:
        return [f"S7: {_cell(ours, 'steps')}", ""]
    lines = [f"S7, decoding cost on the primary: service_wal processes decoding at once (each its own "
             f"temporary slot and walsender), no sockets, {_cell(ours, 'writers')} writers on executions "
             f"nobody watches, {_cell(ours, 'seconds')} s a phase: paced at {_cell(ours, 'paced_rate_per_s')} commits/s "
             "(half the flat-out rate with one instance), then flat out.", "",
             "| instances | " + " | ".join(label for label, _, _ in S7_COLUMNS) + " |",
             "| ---: | " + " | ".join("---:" for _ in S7_COLUMNS) + " |"]
    for step in ours["steps"]:
        lines.append(f"| {step['instances']} | "
                     + " | ".join(_cell(step[phase], key) for _, phase, key in S7_COLUMNS) + " |")
    return lines + [""]


def _stalls(machine: dict) -> list[str]:
    """The machine at rest (bench/machine_stalls.py), before and after the run."""
    probes = [(when, machine[f"stalls_{when}"]) for when in ("before", "after")
              if f"stalls_{when}" in machine]
    if not probes:
        return []
    said = "; ".join(f"{when} the run, {p['gaps_per_core_per_s']} a second per core "
                     f"({p['over_5ms_per_core_per_s']} over 5 ms, longest {p['longest_ms']} ms)"
                     for when, p in probes)
    return ["", f"At rest, a process spinning on each core lost it for over {probes[0][1]['gap_ms']:g} ms: "
                f"{said}. Every process of the run sees such stalls too: they are the floor under the tails "
                "below."]


def _other_tree(machine: dict) -> str:
    """Where the measured service came from, when not from the bench's own checkout (--service-tree)."""
    tree = machine.get("service_tree")
    if tree is None or Path(tree) == Path(__file__).resolve().parent.parent:
        return ""
    return f" from {tree} (bench at {machine.get('bench_commit')})"


def s6_table(report: dict) -> list[str]:
    """S6's steps, one row each, a column for the change source, under the issue's targets."""
    designs = report.get("S6", {}).get("designs", {})
    ran = [(design, source) for design, source in (("service", "notify"), ("service_wal", "wal"))
           if design in designs and "not_applicable" not in designs[design]]
    if not ran:
        return []
    first = designs[ran[0][0]]
    lines = [f"S6, the list views: executions-feed sockets on /api/v1/ws (the service only; the baselines "
             f"have no feed), spread evenly over {first.get('users', '-')} users; a writer at "
             f"{_cell(first, 'rate_per_s')} changes/s round-robin over their {_cell(first, 'executions')} "
             f"executions for {_cell(first, 'seconds')} s a step. Latency is commit -> arrival per delivered "
             "feed message. Targets (issue 13): 1,000 feed sockets p99 <= 10 ms, 5,000 <= 50 ms, in both "
             "sources; 0 lost, reordered or delivered to a socket of another user.", "",
             "| source | " + " | ".join(label for label, _ in S6_COLUMNS) + " |",
             "| --- | " + " | ".join("---:" for _ in S6_COLUMNS) + " |"]
    for design, source in ran:
        ours = designs[design]
        if "steps" not in ours:
            lines.append(f"| {source} | {_cell(ours, 'steps')} |")
            continue
        for step in ours["steps"]:
            cpu = step.get("cpu_percent", {})
            figures = {**step, "server_cpu_percent": cpu.get("server"), "others_cpu_percent": cpu.get("others")}
            lines.append(f"| {source} | " + " | ".join(_cell(figures, key) for _, key in S6_COLUMNS) + " |")
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
    colors = {"service": "tab:green", "service_wal": "tab:purple", "service_standby": "tab:orange",
              "polling": "tab:red", "broadcaster": "tab:blue"}
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
