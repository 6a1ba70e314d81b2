#!/usr/bin/env python3
"""Groups a profile of a server by where its time goes, for scripts/profile.sh.

Usage:
  profile_report.py instructions SHORT.out SHORT_ANSWERS LONG.out LONG_ANSWERS
      callgrind: user-space instructions per answer by component, the difference of a short and a
      long run over the difference of their answers (start-up and shutdown cancel out); then the
      functions that cost the most per answer, and the allocations per answer.
  profile_report.py cpu PERF.data US_PER_ANSWER
      perf (cpu-clock): each component's share of the samples, and that share of the measured CPU
      time per answer in microseconds.

A symbol belongs to the first component whose pattern it matches; inlined code counts where it was
inlined, so a component is approximate at its edges.
"""

import os
import re
import subprocess
import sys
from collections import Counter

# (component, pattern over the function's name), first match wins.
USER_COMPONENTS = [
    ("allocator (malloc, free)", r"^(malloc|free|cfree|realloc|calloc|_int_\w+|malloc_consolidate|unlink_chunk.*|tcache.*|__rust_alloc|__rust_dealloc|__rust_realloc|__rustc::__r\w+)$"),
    ("system call wrappers", r"^(__libc_recv|__libc_send|__send|__recv|recv|send|sendto|recvfrom|epoll_wait|epoll_ctl|syscall|clock_gettime\S*|__clock_gettime|__vdso\w*|writev|__writev|read|write|__libc_write|__libc_read)$"),
    ("memcpy, memchr", r"^__(memcpy|memmove|memchr|memset|memcmp|bcmp|memrchr)|^(memcpy|memmove|memchr|memset|memcmp|bcmp)$"),
    ("actix (contexts, mailboxes, envelopes, addresses)", r"actix"),
    ("tokio-util (framed reader)", r"tokio_util"),
    ("tokio and mio (I/O driver, timers, tasks, LocalSet)", r"tokio|mio::"),
    ("bytes", r"bytes::"),
    ("tracing and metrics", r"tracing|metrics"),
    ("the server's own code (codec, session, oracle, sink)", r"zen_server|plain_tokio"),
    ("std, core, futures and the rest", r"."),
]
KERNEL_NETWORK = r"tcp|inet|sock|skb|ip_|__ip|net_|napi|loopback|ep_|epoll|dev_|__dev|nf_|xmit|sk_|netif|rx|tx|copy_|_copy|csum|iov"


def function_name(symbol):
    """`file:function [object]` as callgrind_annotate prints it, to `function`."""
    symbol = re.sub(r" \[[^\]]*\]$", "", symbol.strip())
    return symbol.split(":", 1)[1] if ":" in symbol else symbol


def callgrind_functions(path):
    out = subprocess.run(
        ["callgrind_annotate", "--inclusive=no", "--threshold=100", "--auto=no", path],
        capture_output=True, text=True, check=True,
    ).stdout
    costs = Counter()
    for line in out.splitlines():
        match = re.match(r"\s*([\d,]+)\s+\([^)]*\)\s+(.*)", line)
        if match and "PROGRAM TOTALS" not in line:
            costs[function_name(match.group(2))] += int(match.group(1).replace(",", ""))
    return costs


def callgrind_calls(path, callee):
    """How many times `callee` was called, summed over its callers."""
    out = subprocess.run(
        ["callgrind_annotate", "--tree=caller", "--inclusive=yes", "--auto=no", "--threshold=100", path],
        capture_output=True, text=True, check=True,
    ).stdout
    callers, total = [], 0
    for line in out.splitlines():
        if re.match(r"\s*[\d,]+ \([^)]*\)\s+<", line):
            callers.append(line)
        elif re.match(r"\s*[\d,]+ \([^)]*\)\s+\*", line):
            if function_name(line.split("*", 1)[1]) == callee:
                total += sum(int(n.replace(",", "")) for c in callers for n in re.findall(r"\(([\d,]+)x\)", c))
            callers = []
        elif not line.strip():
            callers = []
    return total


def component(name):
    return next(title for title, pattern in USER_COMPONENTS if re.search(pattern, name))


def instructions(short_path, short_answers, long_path, long_answers):
    answers = int(long_answers) - int(short_answers)
    if answers <= 0:
        sys.exit("profile_report: the long run answered no more than the short one")
    short, long = callgrind_functions(short_path), callgrind_functions(long_path)
    per_function = {name: (long[name] - short.get(name, 0)) / answers for name in long}
    by_component = Counter()
    for name, cost in per_function.items():
        by_component[component(name)] += cost
    print(f"user-space instructions per answer ({answers} answers between the two runs)")
    for title, _ in USER_COMPONENTS:
        print(f"  {title:<58} {by_component[title]:>8,.0f}")
    print(f"  {'total':<58} {sum(by_component.values()):>8,.0f}")
    print("the functions that cost most per answer (their own instructions, inlined code included)")
    for name, cost in sorted(per_function.items(), key=lambda item: -item[1])[:int(os.environ.get("PROFILE_TOP", "15"))]:
        print(f"  {cost:>8,.0f}  {name[:120]}")
    mallocs = (callgrind_calls(long_path, "malloc") - callgrind_calls(short_path, "malloc")) / answers
    print(f"allocations (calls to malloc) per answer: {mallocs:.1f}")


def cpu(perf_data, us_per_answer):
    us_per_answer = float(us_per_answer)
    out = subprocess.run(
        ["perf", "report", "-i", perf_data, "--stdio", "--no-children", "--sort", "dso,sym", "-F", "overhead,dso,sym"],
        capture_output=True, text=True, check=True,
    ).stdout
    shares = Counter()
    for line in out.splitlines():
        match = re.match(r"\s*([\d.]+)%\s+(\S+)\s+\[(.)\]\s+(.*)", line)
        if not match:
            continue
        share, dso, kind, name = float(match.group(1)), match.group(2), match.group(3), match.group(4).strip()
        if kind == "k" or dso.startswith("[kernel"):
            title = "kernel: TCP/IP, sockets, epoll" if re.search(KERNEL_NETWORK, name, re.I) else "kernel: system call entry, scheduler, the rest"
        else:
            title = component(name)
        shares[title] += share
    total = sum(shares.values()) or 1.0
    print(f"CPU per answer by component (perf cpu-clock samples; {us_per_answer:.2f} us per answer in all)")
    for title in ["kernel: TCP/IP, sockets, epoll", "kernel: system call entry, scheduler, the rest"] + [t for t, _ in USER_COMPONENTS]:
        print(f"  {title:<58} {100 * shares[title] / total:>5.1f}%  {us_per_answer * shares[title] / total:>5.2f} us")


if __name__ == "__main__":
    commands = {"instructions": (instructions, 4), "cpu": (cpu, 2)}
    if len(sys.argv) < 2 or sys.argv[1] not in commands or len(sys.argv) != 2 + commands[sys.argv[1]][1]:
        sys.exit(__doc__)
    command, _ = commands[sys.argv[1]]
    command(*sys.argv[2:])
