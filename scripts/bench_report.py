#!/usr/bin/env python3
"""Turns the raw results of scripts/bench.sh into bench/RESULTS.md and bench/chart.svg.

Usage: bench_report.py RAW.jsonl OUT_DIR

Every figure is a median over repetitions, with the range (min-max) beside it; every ratio is
zen-server's median over the reference's (or Redis's) median from the same run. Beside throughput
figures stands the load generator's own CPU share, flagged when it was the bottleneck
(client-bound). Results recorded before zen-client reported CPU use, or without Redis, simply
show "-" there.
"""

import json
import os
import platform
import statistics
import subprocess
import sys
from collections import defaultdict

# (scenario, title, metric, target ratio by placement, higher is better) - the targets the project
# set itself. Throughput must reach 0.90 of the reference with the server on one core (pinned),
# where the comparison is cleanest, and 0.85 unpinned.
THROUGHPUT = {"pinned": 0.90, "unpinned": 0.85}
LATENCY = {"pinned": 1.3, "unpinned": 1.3}
TARGETS = [
    ("c50x1", "50 connections, depth 1", "answers_per_sec", THROUGHPUT, True),
    ("c50x1", "50 connections, depth 1", "p99", LATENCY, False),
    ("c50x16", "50 connections, depth 16", "answers_per_sec", THROUGHPUT, True),
    ("c1000x1", "1000 connections, depth 1", "answers_per_sec", THROUGHPUT, True),
    ("c1000x1", "1000 connections, depth 1", "p99", LATENCY, False),
    ("churn", "churn, 50 concurrent", "connections_per_sec", {"pinned": 0.9, "unpinned": 0.9}, True),
]
METRIC_NAMES = {"answers_per_sec": "answers/s", "connections_per_sec": "connections/s", "p99": "p99 latency (us)"}
# The scenarios measuring the server's CPU time per answer at a rate every server sustains, and
# their targets with the server on one core: at most 1.15 times the reference's, and no more than
# Redis's or the same design written plainly in actix (plain-actix).
CPU_SCENARIOS = [
    ("cpu50k", "50 connections, 50,000/s in all"),
    ("cpu10k", "1,000 connections, each asking every 100 ms (10,000/s in all)"),
]
CPU_TARGET_REFERENCE = 1.15
CPU_TARGET_REDIS = 1.00
CPU_TARGET_ACTIX = 1.00
# Saturated scenarios and churn where plain-actix runs beside zen-server; at 16 questions in flight
# zen-server should answer at least 5 times as many questions per second.
ACTIX_SCENARIOS = [
    ("c50x1", "50 connections, depth 1", "answers_per_sec", None),
    ("c50x16", "50 connections, depth 16", "answers_per_sec", 5.0),
    ("c1000x1", "1000 connections, depth 1", "answers_per_sec", None),
    ("churn", "churn, 50 concurrent", "connections_per_sec", None),
]
# Saturated scenarios where Redis, asked PING, runs beside the other two.
REDIS_SCENARIOS = [
    ("c50x1", "50 connections, depth 1"),
    ("c50x16", "50 connections, depth 16"),
    ("c1000x1", "1000 connections, depth 1"),
]
# Sharing the machine: zen-server with its default `server.workers` must keep its p99 within 1.5
# times plain tokio's and 1.2 times plain-actix's, and its answers/s at least 0.95 of each's.
SHARED_P99 = {"reference": 1.5, "actix": 1.2}
SHARED_ANSWERS = 0.95
SERVERS = ("zen", "reference", "redis")
CPU_SERVERS = ("zen", "reference", "actix", "redis")
# Over TLS: zen-server on tls.listen, Redis on its TLS port, and plain zen-server behind stunnel
# (the two processes' CPU together). Targets: zen-server's CPU per answer below both; its full
# handshakes per second at least Redis's.
TLS_SERVERS = ("zen-tls", "redis-tls", "stunnel")
TLS_NAMES = {"zen-tls": "zen-server", "redis-tls": "Redis", "stunnel": "stunnel + zen-server"}
SHARED_NAMES = {"zen": "zen-server, default workers", "reference": "plain tokio", "actix": "plain-actix"}


def metric(result, name):
    return result["latency_us"]["p99"] if name == "p99" else result[name]


def summary(values):
    if not values:
        return None
    return statistics.median(values), min(values), max(values)


def fmt(stats, digits=0):
    if stats is None:
        return "-"
    median, low, high = stats
    return f"{median:,.{digits}f} ({low:,.{digits}f}-{high:,.{digits}f})"


def fmt_ratio(numerator, denominator):
    """The ratio of two summaries' medians, or "-" when either is missing."""
    if numerator is None or denominator is None or not denominator[0]:
        return "-"
    return f"{numerator[0] / denominator[0]:.2f}"


def client_cpu(runs):
    """The load generator's median CPU share over `runs`, and in how many it was the bottleneck."""
    values = [r["client_cpu_percent"] for r in runs if r.get("client_cpu_percent") is not None]
    if not values:
        return "-"
    text = f"{statistics.median(values):.0f}%"
    bound = sum(1 for r in runs if r.get("client_bound"))
    if bound:
        text += f", client-bound in {bound} of {len(runs)}"
    return text


def environment(with_redis):
    def run(*command):
        try:
            return subprocess.run(command, capture_output=True, text=True, check=False).stdout.strip()
        except OSError:
            return "?"

    cpu = "?"
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            cpu = next(line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    lines = [
        f"- date: {run('date', '-u', '+%Y-%m-%d %H:%M UTC')}",
        f"- commit: {run('git', 'rev-parse', '--short', 'HEAD')}",
        f"- machine: {os.cpu_count()} CPUs ({cpu}), Linux {platform.release()}",
        f"- {run('rustc', '--version')}",
    ]
    if with_redis:
        lines.append(f"- {run('redis-server', '--version')}")
    return lines


def main(raw_path, out_dir):
    results = [json.loads(line) for line in open(raw_path)]
    by_key = defaultdict(list)
    for result in results:
        by_key[(result["scenario"], result["placement"], result["server"])].append(result)
    placements = [p for p in ("pinned", "unpinned") if any(k[1] == p for k in by_key)]
    reps = max(r["rep"] for r in results)

    def stats(scenario, placement, server, name):
        return summary([metric(r, name) for r in by_key[(scenario, placement, server)]])

    lines = [
        "# Benchmark results",
        "",
        "zen-server against the reference (`src/bin/plain-tokio.rs`: the same protocol and answer",
        "table in plain tokio, one task per connection, no actors), measured in one run by",
        "`scripts/bench.sh`, alternating which server goes first. *pinned*: server on CPU 0, load",
        "generator on CPU 1 (`taskset`), so each server runs on one core; *unpinned*: both free.",
        f"Each figure is the median of {reps} runs, with the range in brackets; ratios are",
        "zen-server's median over the reference's. zen-server runs with its defaults except",
        "`log.level = \"warn\"` and `limits.max_connections = 20000`.",
        "",
        "A second yardstick, where it applies: Redis (`redis-server`, no persistence), a well-tuned",
        "single-threaded server in C, asked `PING` by the same load generator",
        "(`zen-client bench --protocol redis-ping`, every answer checked to be `+PONG`), in turn",
        "with the other two, in `cpu50k`, `cpu10k` and the saturated `c50x1`, `c50x16` and `c1000x1`.",
        "Its work per answer is a little less than a Zen answer's (a fixed reply, no table to look",
        "in): what a lean event loop spends on the same reads and writes. \"-\" where Redis did not run.",
        "",
        *environment(any(k[2] == "redis" for k in by_key)),
        "",
        "A third, where it applies: plain-actix (`src/bin/plain-actix.rs`), zen-server's design written",
        "the way actix's own examples write a TCP actor service (a `Server` actor over the listener,",
        "a `ZenSession` with `FramedRead` as its `StreamHandler` and `FramedWrite` for answers, one",
        "`Oracle` actor asked with `send(..)` and `.wait(ctx)`, one arbiter): what the design costs",
        "written plainly, in `cpu50k`, `cpu10k`, `c50x1`, `c50x16`, `c1000x1` and `churn`.",
        "",
        "Reproduce: `scripts/bench.sh` (about 40 minutes; `--reps N` for more repetitions).",
        "",
        "## Targets",
        "",
        "Beside each throughput figure, the load generator's own CPU use in those runs, as a share of",
        "the CPUs it could use; *client-bound* marks runs where it was above 95%: the load generator",
        "was the bottleneck, and the figure is its limit rather than the server's.",
        "",
        "| scenario | metric | placement | zen-server | client CPU | reference | client CPU | ratio | target | met |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for scenario, title, name, targets, higher in TARGETS:
        for placement in placements:
            target = targets[placement]
            zen = stats(scenario, placement, "zen", name)
            ref = stats(scenario, placement, "reference", name)
            if zen is None or ref is None:
                continue
            ratio = zen[0] / ref[0] if ref[0] else float("nan")
            met = ratio >= target if higher else ratio <= target
            bound = f"{'>=' if higher else '<='} {target}"
            cpu = {
                server: client_cpu(by_key[(scenario, placement, server)]) if name != "p99" else ""
                for server in ("zen", "reference")
            }
            lines.append(
                f"| {title} | {METRIC_NAMES[name]} | {placement} | {fmt(zen)} | {cpu['zen']} | {fmt(ref)} | {cpu['reference']} | "
                f"{ratio:.2f} | {bound} | {'yes' if met else 'no'} |"
            )

    if any(k[0] == "shared" for k in by_key):
        lines += ["", "## Sharing the machine", ""]
        lines += [
            "50 connections asking one question at a time (`c50x1`), zen-server with its default",
            "`server.workers` (0: one per CPU it may use but one) and with each count from 1 to the CPUs,",
            "beside plain tokio (a thread per CPU, work stealing) and plain-actix (one arbiter).",
            "*unpinned*: the load generator competes with the server for every core, as on a laptop or",
            "a small VM; *pinned*: server on CPU 0, load on CPU 1 (the server may use one CPU, so its",
            "default is one worker). Ratios are the default's medians over each yardstick's. Targets,",
            f"unpinned: p99 at most {SHARED_P99['reference']} times the reference's and {SHARED_P99['actix']} times",
            f"plain-actix's, answers/s at least {SHARED_ANSWERS} of each's.",
            "",
            "| placement | server | answers/s | p50 (us) | p99 (us) | client CPU |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        shared_servers = sorted({k[2] for k in by_key if k[0] == "shared"}, key=lambda s: (s != "zen", s))
        for placement in placements:
            for server in shared_servers:
                runs = by_key[("shared", placement, server)]
                if runs:
                    lines.append(
                        f"| {placement} | {SHARED_NAMES.get(server, server)} | {fmt(stats('shared', placement, server, 'answers_per_sec'))} | "
                        f"{fmt(summary([r['latency_us']['p50'] for r in runs]))} | {fmt(stats('shared', placement, server, 'p99'))} | "
                        f"{client_cpu(runs)} |"
                    )
        lines += ["", "| placement | metric | zen/reference | target | zen/actix | target | met |", "| --- | --- | --- | --- | --- | --- | --- |"]
        for placement in placements:
            zen, ref, actix = (stats("shared", placement, server, "p99") for server in ("zen", "reference", "actix"))
            if zen is None or ref is None or actix is None:
                continue
            judged = placement == "unpinned"
            met = zen[0] <= SHARED_P99["reference"] * ref[0] and zen[0] <= SHARED_P99["actix"] * actix[0]
            lines.append(
                f"| {placement} | p99 | {fmt_ratio(zen, ref)} | <= {SHARED_P99['reference']} | {fmt_ratio(zen, actix)} | "
                f"<= {SHARED_P99['actix']} | {('yes' if met else 'no') if judged else '-'} |"
            )
            zen, ref, actix = (stats("shared", placement, server, "answers_per_sec") for server in ("zen", "reference", "actix"))
            met = zen[0] >= SHARED_ANSWERS * ref[0] and zen[0] >= SHARED_ANSWERS * actix[0]
            lines.append(
                f"| {placement} | answers/s | {fmt_ratio(zen, ref)} | >= {SHARED_ANSWERS} | {fmt_ratio(zen, actix)} | "
                f">= {SHARED_ANSWERS} | {('yes' if met else 'no') if judged else '-'} |"
            )

    if any(k[0] in dict(CPU_SCENARIOS) for k in by_key):
        lines += ["", "## Server CPU per answer", ""]
        lines += [
            "Questions paced at a rate every server sustains, so each does the same work: the server's",
            "CPU time (user and system, to the nanosecond from each thread's schedstat) in the measured",
            "window over the answers in it. Each connection asks its next question only once answered,",
            "as in the book's conversation; how many answers a wake-up of the server carries (the times",
            "its threads were put on a CPU, over the answers) depends on how the load generator's sends",
            "fall on its 1 ms timer ticks, and is given beside. Lower is better; the ratios are",
            "zen-server's over the reference's, over plain-actix's and over Redis's (answering `PING`).",
            f"Target, pinned: zen/reference at most {CPU_TARGET_REFERENCE:.2f}, zen/actix at most {CPU_TARGET_ACTIX:.2f}",
            f"and zen/Redis at most {CPU_TARGET_REDIS:.2f}. Unpinned figures are reported, with no target.",
            "",
            "| scenario | placement | zen-server (us/answer) | reference (us/answer) | plain-actix (us/answer) | Redis (us/answer) | zen/reference | zen/actix | zen/Redis | met | answers/s (zen / reference / actix / Redis) | answers per wake-up (zen / reference / actix / Redis) | client CPU (zen / reference / actix / Redis run) |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for scenario, title in CPU_SCENARIOS:
            for placement in placements:
                runs = {server: by_key[(scenario, placement, server)] for server in CPU_SERVERS}
                if not runs["zen"] or not runs["reference"]:
                    continue
                per_answer = {
                    server: summary([r["server_cpu_us_per_answer"] for r in runs[server] if r.get("server_cpu_us_per_answer") is not None])
                    for server in runs
                }
                zen, ref, actix, redis = (per_answer[server] for server in CPU_SERVERS)
                answers = " / ".join(fmt(summary([r["answers_per_sec"] for r in runs[server]])) for server in CPU_SERVERS)
                per_wakeup = " / ".join(
                    fmt(summary([r["answers_per_server_run"] for r in runs[server] if r.get("answers_per_server_run") is not None]), 1)
                    for server in CPU_SERVERS
                )
                cpu = " / ".join(client_cpu(runs[server]) for server in CPU_SERVERS)
                met = "-"
                if placement == "pinned" and zen is not None and ref is not None:
                    met = "yes" if (
                        zen[0] <= CPU_TARGET_REFERENCE * ref[0]
                        and (actix is None or zen[0] <= CPU_TARGET_ACTIX * actix[0])
                        and (redis is None or zen[0] <= CPU_TARGET_REDIS * redis[0])
                    ) else "no"
                    missing = [name for name, figure in (("plain-actix", actix), ("Redis", redis)) if figure is None]
                    met += f" (no {' or '.join(missing)})" if missing else ""
                lines.append(
                    f"| {title} | {placement} | {fmt(zen, 2)} | {fmt(ref, 2)} | {fmt(actix, 2)} | {fmt(redis, 2)} | "
                    f"{fmt_ratio(zen, ref)} | {fmt_ratio(zen, actix)} | {fmt_ratio(zen, redis)} | {met} | {answers} | {per_wakeup} | {cpu} |"
                )

    if any(k[2] == "actix" and k[0] in dict((s, t) for s, t, _, _ in ACTIX_SCENARIOS) for k in by_key):
        lines += ["", "## The same design written plainly", ""]
        lines += [
            "zen-server beside plain-actix, its design as actix's examples write it, saturated and in",
            "churn. plain-actix waits for each answer before reading the next question (`.wait(ctx)`",
            "keeps its answers in order), so questions in flight queue in its socket; zen-server reads",
            "on, asks in batches, and puts answers back in order itself. Target: at 16 questions in",
            "flight, at least 5 times plain-actix's answers per second.",
            "",
            "| scenario | metric | placement | zen-server | client CPU | plain-actix | client CPU | zen/actix | target | met |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for scenario, title, name, target in ACTIX_SCENARIOS:
            for placement in placements:
                zen, actix = (stats(scenario, placement, server, name) for server in ("zen", "actix"))
                if zen is None or actix is None:
                    continue
                met = "-" if target is None else ("yes" if zen[0] >= target * actix[0] else "no")
                lines.append(
                    f"| {title} | {METRIC_NAMES[name]} | {placement} | {fmt(zen)} | {client_cpu(by_key[(scenario, placement, 'zen')])} | "
                    f"{fmt(actix)} | {client_cpu(by_key[(scenario, placement, 'actix')])} | {fmt_ratio(zen, actix)} | "
                    f"{'-' if target is None else f'>= {target:.0f}'} | {met} |"
                )

    if any(k[0] in dict(REDIS_SCENARIOS) and k[2] == "zen" for k in by_key):
        lines += ["", "## Saturated, beside Redis", ""]
        lines += [
            "Throughput with every connection keeping its questions in flight, Redis asked `PING`;",
            "beside it, the load generator's CPU share in the Redis runs (*client-bound*: the figure is",
            "the load generator's limit, not Redis's). The ratios are zen-server's and the reference's",
            "medians over Redis's.",
            "",
            "| scenario | placement | Redis answers/s | client CPU | zen-server answers/s | zen/Redis | reference/Redis |",
            "| --- | --- | --- | --- | --- | --- | --- |",
        ]
        for scenario, title in REDIS_SCENARIOS:
            for placement in placements:
                if not by_key[(scenario, placement, "zen")]:
                    continue
                zen, ref, redis = (stats(scenario, placement, server, "answers_per_sec") for server in SERVERS)
                redis_runs = by_key[(scenario, placement, "redis")]
                lines.append(
                    f"| {title} | {placement} | {fmt(redis)} | {client_cpu(redis_runs)} | {fmt(zen)} | "
                    f"{fmt_ratio(zen, redis)} | {fmt_ratio(ref, redis)} |"
                )

    if any(k[0] in ("tls50k", "tlschurn") for k in by_key):
        lines += ["", "## TLS", ""]
        lines += [
            "The same load over TLS 1.3, with a certificate (ECDSA P-256) made for the run: `tls50k` is",
            "50 long-lived connections paced at 50,000 questions/s in all, each server's CPU time per",
            "answer; `tlschurn` is 50 loops of connect, full handshake (the client resumes no session),",
            "one question, close, in connections per second (at one question per connection, the CPU",
            "per answer is the CPU per connection). Servers: zen-server on `tls.listen`; Redis on its",
            "TLS port (`--tls-port`, `--tls-auth-clients no`), asked `PING`; and the plain zen-server",
            "behind stunnel, which terminates TLS: the price without native TLS, its CPU the two",
            "processes' together. Pinned, both stunnel and zen-server share CPU 0.",
            "",
            "| scenario | placement | zen-server | Redis | stunnel + zen-server | zen/Redis | zen/stunnel | target | met | client CPU (zen / Redis / stunnel run) |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for scenario, name, unit, higher in (
            ("tls50k", "server_cpu_us_per_answer", "us/answer", False),
            ("tlschurn", "connections_per_sec", "connections/s", True),
            ("tlschurn", "server_cpu_us_per_answer", "us/connection", False),
        ):
            for placement in placements:
                runs = {server: by_key[(scenario, placement, server)] for server in TLS_SERVERS}
                if not runs["zen-tls"]:
                    continue
                figures = {
                    server: summary([r[name] for r in runs[server] if r.get(name) is not None]) for server in TLS_SERVERS
                }
                zen, redis, proxied = (figures[server] for server in TLS_SERVERS)
                digits = 2 if unit != "connections/s" else 0
                if scenario == "tls50k":
                    target, met = "below Redis and stunnel", zen is not None and all(
                        other is None or zen[0] < other[0] for other in (redis, proxied)
                    )
                elif higher:
                    target, met = "at least Redis", zen is not None and (redis is None or zen[0] >= redis[0])
                else:
                    target, met = "-", None
                met_text = "-" if met is None or placement != "pinned" else ("yes" if met else "no")
                cpu = " / ".join(client_cpu(runs[server]) for server in TLS_SERVERS)
                lines.append(
                    f"| {scenario} ({unit}) | {placement} | {fmt(zen, digits)} | {fmt(redis, digits)} | {fmt(proxied, digits)} | "
                    f"{fmt_ratio(zen, redis)} | {fmt_ratio(zen, proxied)} | {target} | {met_text} | {cpu} |"
                )
        lines += ["", "Targets are judged pinned, where each server has one core.", ""]

    lines += ["", "## Idle connections", ""]
    lines += ["| placement | server | connections | KiB per connection | errors |", "| --- | --- | --- | --- | --- |"]
    for placement in placements:
        for server in ("zen", "reference"):
            runs = by_key[("idle", placement, server)]
            if runs:
                per_conn = summary([r["server_kib_per_conn"] for r in runs if r.get("server_kib_per_conn") is not None])
                errors = sum(r["errors"] for r in runs)
                lines.append(f"| {placement} | {server} | {runs[0]['conns']:,} | {fmt(per_conn, 2)} | {errors} |")
    lines += ["", "Target: zen-server at most 2.5 KiB per idle connection, and below the reference.", ""]

    lines += ["## Many connections at once", ""]
    lines += [
        "Connections opened and held (each asked once), while 10 other clients ask one question at",
        "a time; their latency shows whether the server still answers promptly.",
        "",
        "| placement | server | held | errors | KiB per held connection | others' answers/s | others' p99 (us) |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for placement in placements:
        for server in ("zen", "reference"):
            runs = by_key[("many", placement, server)]
            if runs:
                held = min(r["held"]["connections"] for r in runs)
                errors = sum(r["errors"] for r in runs)
                per_conn = summary([r["held"]["server_kib_per_conn"] for r in runs if r["held"].get("server_kib_per_conn") is not None])
                lines.append(
                    f"| {placement} | {server} | {held:,} | {errors} | {fmt(per_conn, 2)} | "
                    f"{fmt(summary([r['answers_per_sec'] for r in runs]))} | {fmt(summary([r['latency_us']['p99'] for r in runs]))} |"
                )
    lines += ["", "Target: every connection answered, no errors, others' p99 within 10 ms (10,000 us).", ""]

    lines += ["## Every scenario", ""]
    lines += [
        "| scenario | placement | server | answers/s | connections/s | p50 (us) | p99 (us) | p99.9 (us) | errors |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for scenario in dict.fromkeys(r["scenario"] for r in results):
        for placement in placements:
            extra = sorted(k[2] for k in by_key if k[0] == scenario and k[1] == placement and k[2] not in CPU_SERVERS + TLS_SERVERS)
            for server in CPU_SERVERS + TLS_SERVERS + tuple(extra):
                runs = by_key[(scenario, placement, server)]
                if not runs:
                    continue
                pick = lambda f: fmt(summary([f(r) for r in runs]))
                lines.append(
                    f"| {scenario} | {placement} | {server} | {pick(lambda r: r['answers_per_sec'])} | "
                    f"{pick(lambda r: r['connections_per_sec'])} | {pick(lambda r: r['latency_us']['p50'])} | "
                    f"{pick(lambda r: r['latency_us']['p99'])} | {pick(lambda r: r['latency_us']['p999'])} | "
                    f"{sum(r['errors'] for r in runs)} |"
                )
    lines += [
        "",
        "Scenario names: `cNxD` is N connections each keeping D questions in flight; `cpu50k` is 50",
        "connections paced at 50,000 questions/s in all; `cpu10k` is 1,000 connections each asking every",
        "100 ms (10,000/s in all); `churn` is 50 loops of connect, ask, close; `shared` is `c50x1`",
        "with zen-server's workers varied (`zen-wN`: `server.workers = N`);",
        "`idle` and `many` hold connections open; `tls50k` and `tlschurn` are `cpu50k` and `churn`",
        "over TLS.",
        "",
        "![throughput and p99 against connections](chart.svg)",
        "",
    ]
    with open(os.path.join(out_dir, "RESULTS.md"), "w") as out:
        out.write("\n".join(lines))
    write_chart(by_key, placements, os.path.join(out_dir, "chart.svg"))


def write_chart(by_key, placements, path):
    """Throughput and p99 against connection count (depth 1), both servers, median per point."""
    sweep = sorted({int(k[0][1:].split("x")[0]) for k in by_key if k[0].startswith("c") and k[0].endswith("x1")})
    placement = "pinned" if "pinned" in placements else placements[0]
    series = {}
    for server in ("zen", "reference"):
        points = []
        for conns in sweep:
            runs = by_key[(f"c{conns}x1", placement, server)]
            if runs:
                points.append((conns, statistics.median(r["answers_per_sec"] for r in runs),
                               statistics.median(r["latency_us"]["p99"] for r in runs)))
        series[server] = points
    colors = {"zen": "#1f6feb", "reference": "#d1242f"}
    width, height, margin = 900, 360, 60
    panel = (width - 3 * margin) / 2
    svg = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="12">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
    ]
    import math

    xs = [math.log10(c) for c in sweep] or [0]
    x_low, x_high = min(xs), max(xs) if max(xs) > min(xs) else min(xs) + 1

    for index, (key, title) in enumerate([(1, "answers/s"), (2, "p99 latency (ms)")]):
        left = margin + index * (panel + margin)
        top, bottom = 30, height - margin
        values = [p[key] / (1000 if key == 2 else 1) for s in series.values() for p in s] or [1]
        y_high = max(values) * 1.1
        svg.append(f'<text x="{left + panel / 2}" y="18" text-anchor="middle" font-size="14">{title} against connections ({placement}, depth 1)</text>')
        svg.append(f'<line x1="{left}" y1="{bottom}" x2="{left + panel}" y2="{bottom}" stroke="black"/>')
        svg.append(f'<line x1="{left}" y1="{top}" x2="{left}" y2="{bottom}" stroke="black"/>')
        for tick in range(5):
            value = y_high * tick / 4
            y = bottom - (bottom - top) * tick / 4
            label = f"{value:,.0f}" if key == 1 else f"{value:.1f}"
            svg.append(f'<text x="{left - 5}" y="{y + 4}" text-anchor="end">{label}</text>')
            svg.append(f'<line x1="{left}" y1="{y}" x2="{left + panel}" y2="{y}" stroke="#ddd"/>')
        for conns in sweep:
            x = left + panel * (math.log10(conns) - x_low) / (x_high - x_low)
            svg.append(f'<text x="{x}" y="{bottom + 16}" text-anchor="middle">{conns}</text>')
        svg.append(f'<text x="{left + panel / 2}" y="{bottom + 34}" text-anchor="middle">connections (log scale)</text>')
        for server, points in series.items():
            coords = []
            for conns, answers, p99 in points:
                value = answers if key == 1 else p99 / 1000
                x = left + panel * (math.log10(conns) - x_low) / (x_high - x_low)
                y = bottom - (bottom - top) * value / y_high
                coords.append(f"{x:.1f},{y:.1f}")
                svg.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{colors[server]}"/>')
            if coords:
                svg.append(f'<polyline points="{" ".join(coords)}" fill="none" stroke="{colors[server]}" stroke-width="2"/>')
    for index, server in enumerate(("zen", "reference")):
        name = "zen-server" if server == "zen" else "reference (plain tokio)"
        svg.append(f'<rect x="{margin + index * 220}" y="{height - 16}" width="12" height="12" fill="{colors[server]}"/>')
        svg.append(f'<text x="{margin + index * 220 + 18}" y="{height - 6}">{name}</text>')
    svg.append("</svg>")
    with open(path, "w") as out:
        out.write("\n".join(svg) + "\n")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
