#!/usr/bin/env python3
"""iodict_log side by side with other Python stores, in one run, on one disk.

Stores (tools/bench_workloads.py, STORES): iodict_log in up to three builds,
rocksdict (RocksDB), iodict 0.0.8, diskcache (Cache, Index, Deque), sqlitedict,
persist-queue (Queue, SQLiteQueue), lmdb (default and sync=False), shelve
(dbm.dumb here), a raw-append floor (pre-framed records, one os.write each, a
dict index) and, for the open, pickle.loads of a plain dict of the same keys.
Each store runs every workload in a fresh child process (multiprocessing,
spawn) and a fresh directory, --repeat times, the stores interleaved; the
median is reported, with the durability of each store beside it: stores that
fsync every write ("fsync/op") are not comparable with those that don't ("no
fsync"), and the table says which is which. A store that is not installed or
fails shows "n/a (why)". Timed loops stop at --budget seconds (the row then
says how many of N ops it did).

The builds of iodict_log, side by side: "iodict_log" is what is installed (the
C core where it was compiled), "iodict_log-pure" the same code with
IODICT_LOG_PURE=1, and with --baseline PATH "iodict_log-base", the checkout at
PATH (pure too). Each child reports the build it ran; bench.md lists them.

    pip install -e '.[bench]'              # the peers, matplotlib
    python tools/bench.py --quick          # ~2 min: small N, 1 run, for before/after a change
    python tools/bench.py --targets --baseline ../main   # the targets table only: ~12 min
    python tools/bench.py --baseline ../main   # full: N=100,000, memory at 1,000,000 keys, 3 runs: ~1 h
    python tools/bench.py --only iodict_log,iodict_log-pure,rocksdict,lmdb-nosync --workloads batch,replay

(Times on the 2-core development machine shared with three other jobs. In the full run
the 1,000,000-key memory workload of sqlitedict, shelve and diskcache takes the most.)

Writes bench.md (the targets table of issue 19 first, then every figure),
bench.json and bench.png (ops/s, log scale) into --out (default bench-results/
in the repository, git-ignored) and prints them.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import math
import multiprocessing
import os
import platform
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time

import bench_workloads as bw

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DICT_WORKLOADS = ("insert", "batch", "insert_4k", "get", "overwrite", "reopen", "iterate", "replay", "memory")
QUEUE_WORKLOADS = ("queue", "queue_2x2")
ALL_WORKLOADS = (*DICT_WORKLOADS[:-1], *QUEUE_WORKLOADS, "sync", "memory")
PREPARED = ("reopen", "memory")  # set up once in a child of their own, then measured --repeat times
HEADLINE = (
    ("insert", ""),
    ("get", ""),
    ("batch", ""),
    ("replay", ""),
    ("queue", "put"),
    ("queue", "get"),
    ("sync", ""),
)
DISTRIBUTIONS = (
    "iodict_log",
    "rocksdict",
    "iodict",
    "diskcache",
    "sqlitedict",
    "persist-queue",
    "lmdb",
    "matplotlib",
)
BUILDS = ("iodict_log", "iodict_log-pure", "iodict_log-base")
# The targets table of issue 19: (figure, workload, row, the floor or reference store, targets as
# (store, ">=" | "<=", bound, its name) on iodict_log ÷ that store). A figure in s or B/key: lower is better.
ROCKS_1, LMDB = ("rocksdict", ">=", 1.0, "rocksdict"), "lmdb(sync=False)"
DEQUE_25 = ("diskcache", ">=", 25.0, "diskcache Deque")
HALF = (("rocksdict", ">=", 0.5, "rocksdict"), ("lmdb-nosync", ">=", 0.5, LMDB))
PICKLE_1 = ("pickle", "<=", 1.0, "pickle.loads")
TARGETS: tuple[tuple[str, str, str, str, tuple[tuple[str, str, float, str], ...]], ...] = (
    ("single sets", "insert", "", "floor", (ROCKS_1, ("lmdb-nosync", ">=", 1.5, LMDB))),
    ("random gets", "get", "", "floor", (ROCKS_1, ("lmdb-nosync", ">=", 0.8, LMDB))),
    ("sets in batches of 1,000", "batch", "", "floor", (ROCKS_1, ("lmdb-nosync", ">=", 1.5, LMDB))),
    ("replay of every record", "replay", "", "", HALF),
    ("queue put", "queue", "put", "floor", (DEQUE_25,)),
    ("queue get", "queue", "get", "floor", (DEQUE_25,)),
    ("open + first get", "memory", "open + first get", "pickle", (PICKLE_1,)),
    ("sync=True sets", "sync", "", "floor", (("floor", ">=", 0.9, "the write + fdatasync floor"),)),
    ("index memory", "memory", "index bytes per key", "", ()),
    ("peak RSS growth per key", "memory", "peak RSS growth per key", "pickle", ()),
)
INDEX_TARGET = 75.0  # B/key + the key: today's index (issue 19)
PEER_COLUMNS = (("rocksdict", "÷ rocksdict"), ("lmdb-nosync", "÷ lmdb (sync=False)"), ("diskcache", "÷ diskcache"))
TARGET_PEERS = ("rocksdict", "lmdb-nosync", "diskcache", "floor", "pickle")  # (--targets)
TARGET_WORKLOADS = tuple(dict.fromkeys(workload for _, workload, *_ in TARGETS))


def titles(args: argparse.Namespace) -> dict[tuple[str, str], str]:
    n, m = args.keys, args.memory_keys
    return {
        ("insert", ""): f"insert, {n:,} keys",
        ("batch", ""): f"sets in batches of {bw.BATCH:,}, {n:,} keys",
        ("insert_4k", ""): f"insert 4 KiB compressible values, {n // 4:,} keys",
        ("get", ""): f"random get, {n:,} keys",
        ("overwrite", ""): f"overwrite: 10 rounds over {n // 10:,} keys",
        ("reopen", ""): f"reopen (open + first get), {n:,} keys",
        ("iterate", ""): f"iteration in the store's order, {n:,} keys",
        ("replay", ""): f"replay of every record, {n:,} sets",
        ("queue", "put"): f"queue put, {n:,} items",
        ("queue", "get"): f"queue get, {n:,} items",
        ("queue_2x2", ""): f"queue, 2 producer + 2 consumer processes, {n:,} items",
        ("sync", ""): f"fsync-per-write class: sync writes, {args.sync_keys:,} keys",
        ("memory", "open + first get"): f"open + first get, {m:,} keys",
        ("memory", "peak RSS growth per key"): f"peak RSS growth per key (open + {bw.PROBES:,} gets), {m:,} keys",
        ("memory", "index bytes per key"): f"index bytes per key (sys.getsizeof, without the keys), {m:,} keys",
    }


def sizes(args: argparse.Namespace, workload: str) -> int:
    return {"insert_4k": args.keys // 4, "sync": args.sync_keys, "memory": args.memory_keys}.get(workload, args.keys)


def set_environ(changes: dict[str, str | None]) -> dict[str, str | None]:
    """Set (str) or remove (None) environment variables; returns what they were, to restore."""
    before = {name: os.environ.get(name) for name in changes}
    for name, value in changes.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    return before


def run_child(
    store: type[bw.Store], workload: str, path: str, params: dict, timeout: float, baseline: str
) -> tuple[str, object, str]:
    """Run one workload once in a fresh spawned process: (status, rows or reason, iodict_log build)."""
    ctx = multiprocessing.get_context("spawn")
    receiver, sender = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=bw.child, args=(store.name, workload, path, params, sender, baseline))
    before = set_environ(store.environ)  # (the spawned interpreter inherits the environment at start())
    try:
        proc.start()
    finally:
        set_environ(before)
    sender.close()
    try:
        if receiver.poll(timeout):
            return receiver.recv()
        return "error", f"timed out after {timeout:.0f} s", ""
    except EOFError:
        proc.join()
        return "error", f"child died, exit code {proc.exitcode}", ""
    finally:
        if proc.is_alive():
            proc.kill()
        proc.join()


def roles(store: type[bw.Store], workload: str) -> tuple[str, str, str] | None:
    """(label, durability, n/a reason or "") of a store in a workload, or None if it takes no part."""
    if workload in PREPARED and store.open_reference:
        return store.label, store.durability, ""
    if workload == "batch":
        return (store.label, store.durability, "") if store.batch else None
    if workload == "replay":
        return (store.label, store.durability, "") if store.replay_how else None
    if workload in DICT_WORKLOADS:
        return (store.label, store.durability, "") if store.dict_ops else None
    if workload in QUEUE_WORKLOADS:
        if not store.queue_label:
            return None
        why = store.multiprocess if workload == "queue_2x2" else ""
        return store.queue_label, store.queue_durability, why
    if store.sync_label:
        return store.sync_label, store.sync_durability, ""
    return (store.label, store.durability, store.sync_na) if store.sync_na else None


def run_workload(workload: str, stores: list[type[bw.Store]], args: argparse.Namespace, base: str) -> list[dict]:
    """Every store through one workload, --repeat rounds (stores interleaved within a round)."""
    baseline = args.baseline or ""
    entries: dict[str, dict] = {}
    for store in stores:
        role = roles(store, workload)
        if role is None:
            continue
        n = sizes(args, workload)
        cap = store.max_keys if workload in DICT_WORKLOADS else 0
        note = ""
        if cap and n > cap:
            n, note = cap, f"N={cap:,} ({store.cap_reason})"
        entries[store.name] = {
            "store": store.name,
            "label": role[0],
            "durability": role[1],
            "status": "n/a" if role[2] else "ok",
            "reason": role[2],
            "note": note,
            "params": {"n": n, "budget": args.budget, "value": bw.small_value(), "clock": args.clock},
            "runs": [],
        }
    timeout = max(120.0, 6 * args.budget + 60)
    for e in entries.values():  # reopen and memory: one setup each, in a child of its own
        if workload in PREPARED and e["status"] == "ok":
            e["path"] = bw.fresh_dir(base, workload, e["store"])
            status, payload, _ = run_child(bw.STORES[e["store"]], "prep_keys", e["path"], e["params"], 1800, baseline)
            if status != "ok":
                e["status"], e["reason"] = status, payload
    for rep in range(args.repeat):
        for e in entries.values():
            if e["status"] != "ok":
                continue
            path = e.get("path") or bw.fresh_dir(base, workload, f"{e['store']}-{rep}")
            status, payload, build = run_child(bw.STORES[e["store"]], workload, path, e["params"], timeout, baseline)
            e["build"] = build or e.get("build", "")
            if workload not in PREPARED:
                shutil.rmtree(path, ignore_errors=True)
            if status == "ok":
                e["runs"].append(payload)
            else:
                e["status"], e["reason"] = status, payload
    rows = []
    for e in entries.values():
        shutil.rmtree(e.pop("path", ""), ignore_errors=True)
        e["params"].pop("value")
        if e["status"] != "ok":
            rows.append({**e, "row": "", "runs": []})
            continue
        for i, (row, _) in enumerate(e["runs"][0]):
            results = [run[i][1] for run in e["runs"]]
            values = [r["value"] for r in results]
            median = statistics.median(values)
            middle = min(results, key=lambda r: abs(r["value"] - median))  # extras from the median run
            rows.append({**e, "row": row, "runs": values, "median": median, "result": middle})
    return rows


def fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1024
    return ""


def fmt_value(r: dict) -> str:
    if r["status"] != "ok":
        return f"n/a ({r['reason']})" if r["status"] == "n/a" else f"n/a (failed: {r['reason']})"
    unit = r["result"]["unit"]
    if unit == "ops/s":
        return f"{r['median']:,.0f} ops/s"
    if unit == "s":
        return f"{r['median']:.3f} s" if r["median"] >= 0.01 else f"{r['median'] * 1000:.2f} ms"
    return f"{r['median']:,.1f} B/key"


def notes(r: dict) -> str:
    if r["status"] != "ok":
        return r["note"]
    res, out = r["result"], [r["note"]] if r["note"] else []
    if res.get("done") is not None and res["done"] < res["n"]:
        out.append(f"{res['done']:,} of {res['n']:,} ops in the {r['params']['budget']:g} s budget")
    extra = res.get("extra", {})
    if "disk_per_value" in extra:
        out.append(f"disk {fmt_bytes(extra['disk_bytes'])} ({fmt_bytes(extra['disk_per_value'])}/value)")
    if "disk_after" in extra:
        took = f", {extra['compact_s']:.2f} s" if "compact_s" in extra else ""
        out.append(
            f"disk {fmt_bytes(extra['disk_before'])} → {fmt_bytes(extra['disk_after'])} "
            f"after compaction ({extra['compaction']}{took})"
        )
    if "order" in extra:
        out.append(f"order: {extra['order']}")
    if "how" in extra:
        out.append(extra["how"])
    if "opened" in extra:
        out.append(f"opened {extra['opened']}")
    if "key_bytes" in extra:
        out.append(f"+ the key: {extra['key_bytes']:.1f} B (sys.getsizeof)")
    if "peak_bytes" in extra:
        out.append(f"peak {fmt_bytes(extra['peak_bytes'])}")
    return "; ".join(out)


def over(a: dict | None, b: dict | None) -> str:
    """a's median ÷ b's, "" when either is missing or has no figure."""
    if a is None or b is None or a["status"] != "ok" or b["status"] != "ok":
        return ""
    return f"{a['median'] / b['median']:.2f}"


def ratio(r: dict, reference: dict | None) -> str:
    return "" if r is reference else over(reference, r)


def find(rows: list[dict], workload: str, row: str, store: str) -> dict | None:
    return next((r for r in rows if r["workload"] == workload and r["row"] == row and r["store"] == store), None)


def reference_of(rows: list[dict], workload: str, row: str) -> dict | None:
    return find(rows, workload, row, "iodict_log")


def markdown(rows: list[dict], args: argparse.Namespace) -> str:
    names = titles(args)
    out = [
        "| workload | store | durability | median | iodict_log ÷ this | notes |",
        "|---|---|---|---:|---:|---|",
    ]
    for r in rows:
        title = names.get((r["workload"], r["row"]), f"{r['workload']} {r['row']}")
        ref = reference_of(rows, r["workload"], r["row"])
        cells = (title, r["label"], r["durability"].split("; ")[0], fmt_value(r), ratio(r, ref), notes(r))
        out.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
    out += [
        "",
        "iodict_log ÷ this: for ops/s, > 1 means iodict_log is faster; for s and B/key (lower is better),",
        "< 1 means iodict_log is better. In the sync rows iodict_log runs with sync=True.",
        "",
        "| store | durability, in full | compaction | iteration order |",
        "|---|---|---|---|",
    ]
    seen = set()
    for r in rows:
        if (r["label"], r["durability"]) not in seen:
            seen.add((r["label"], r["durability"]))
            store = bw.STORES[r["store"]]
            dict_role = (r["label"], r["durability"]) == (store.label, store.durability) and store.dict_ops
            extra = (store.compaction, store.order) if dict_role else ("", "")
            out.append(f"| {r['label']} | {r['durability']} | {extra[0]} | {extra[1]} |")
    return "\n".join(out)


def headline(rows: list[dict], args: argparse.Namespace) -> str:
    """iodict_log ÷ each peer on the headline workloads (ops/s: > 1 means iodict_log is faster)."""
    names = titles(args)
    cols = [(w, row) for w, row in HEADLINE if reference_of(rows, w, row)]
    if not cols:
        return ""
    peers: dict[str, dict] = {}  # by store: its dict, its queue and its fsync configuration
    for r in rows:
        if (r["workload"], r["row"]) in cols and r["store"] != "iodict_log":
            store = bw.STORES[r["store"]]
            label = store.label if store.dict_ops else store.queue_label
            if store.dict_ops and store.queue_label and store.queue_label != store.label:
                label += f" / {store.queue_label}"
            peers.setdefault(label, {})[(r["workload"], r["row"])] = r
    head = ["peer"] + [names[c].split(", ")[0] for c in cols]
    out = ["| " + " | ".join(head) + " |", "|---" + "|---:" * len(cols) + "|"]
    for label, by_col in peers.items():
        cells = [label]
        for c in cols:
            peer = by_col.get(c)
            cells.append(ratio(peer, reference_of(rows, *c)) or "n/a" if peer else "")
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def targets(rows: list[dict], args: argparse.Namespace) -> str:
    """The targets table of issue 19: iodict_log's figure, its ratios to the peers, the builds' ratios."""
    cols = ["figure", "iodict_log", *(title for _, title in PEER_COLUMNS)]
    cols += ["÷ floor / reference", "native ÷ pure", "pure ÷ base", "target", "met"]
    out = ["| " + " | ".join(cols) + " |", "|---" + "|---:" * (len(cols) - 3) + "|---|---|"]
    for figure, workload, row, reference, goals in TARGETS:
        mine = reference_of(rows, workload, row)
        if mine is None and not any(find(rows, workload, row, name) for name in BUILDS):
            continue
        if mine is None:  # (another build has it: the index bytes of an index that is not a dict)
            value = "n/a (not measurable in this build)"
        else:
            value = fmt_value(mine)
            extra = mine["result"].get("extra", {}) if mine["status"] == "ok" else {}
            if "key_bytes" in extra:
                value += f" + key ({extra['key_bytes']:.0f} B)"
            if "opened" in extra:
                value += f", {extra['opened']}"
        cells = [figure, value]
        cells += [over(mine, find(rows, workload, row, store)) for store, _ in PEER_COLUMNS]
        cells.append(over(mine, find(rows, workload, row, reference)) if reference else "")
        pure, base = (find(rows, workload, row, name) for name in BUILDS[1:])
        cells += [over(mine, pure), over(pure, base)]
        wanted, missed = [], []
        for store, op, bound, peer in goals:
            wanted.append(f"{'≥' if op == '>=' else '≤'} {bound:.1f}× {peer}")
            got = over(mine, find(rows, workload, row, store))
            if got and not (float(got) >= bound if op == ">=" else float(got) <= bound):
                missed.append(f"{got}× {peer}")
            elif not got:
                missed.append(f"no figure for {peer}")
        if row == "index bytes per key":
            wanted.append(f"≤ {INDEX_TARGET:g} B/key + the key")
            if mine is None or mine["status"] != "ok" or mine["median"] > INDEX_TARGET:
                missed.append(value)
        cells += ["; ".join(wanted), ("no: " + ", ".join(missed) if missed else "yes") if wanted else ""]
        out.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
    return "\n".join(out)


BUILD_COLORS = {"iodict_log": "tab:red", "iodict_log-pure": "tab:orange", "iodict_log-base": "tab:pink"}


def bar_color(r: dict) -> str:
    if r["store"] in BUILD_COLORS:
        return BUILD_COLORS[r["store"]]
    return "tab:gray" if r["durability"].startswith("fsync") else "tab:blue"


def chart(rows: list[dict], args: argparse.Namespace, path: str) -> str:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        return f"no chart (matplotlib not installed: {e})"
    names = titles(args)
    panels: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        if r["status"] == "ok" and r["result"]["unit"] == "ops/s":
            panels.setdefault((r["workload"], r["row"]), []).append(r)
    if not panels:
        return "no chart (no ops/s results)"
    cols = 2
    lines = (len(panels) + cols - 1) // cols
    fig, axes = plt.subplots(lines, cols, figsize=(15, 3.2 * lines), squeeze=False)
    for ax, (key, group) in zip(axes.flat, panels.items()):
        labels = [r["label"] for r in group]
        colors = [bar_color(r) for r in group]
        values = [r["median"] for r in group]
        ax.barh(labels, values, color=colors)
        ax.set_xscale("log")
        ax.set_xlim(left=10 ** math.floor(math.log10(min(values))))  # bars start a decade below the smallest
        ax.invert_yaxis()
        ax.set_title(names.get(key, str(key)), fontsize=10)
        ax.tick_params(labelsize=8)
        ax.set_xlabel("ops/s (log)", fontsize=8)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    fig.suptitle(
        "iodict_log and peers: red iodict_log, orange iodict_log-pure, pink iodict_log-base; "
        "blue no fsync per op, gray fsync per op",
        fontsize=11,
    )
    fig.tight_layout(rect=(0, 0, 1, 0.98))
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


TARGETS_LEGEND = """\
Ratios are iodict_log's figure ÷ the other's (native ÷ pure: iodict_log ÷ iodict_log-pure; pure ÷ base:
iodict_log-pure ÷ iodict_log-base). In ops/s above 1 is faster; in s and B/key (open, memory) below 1 is
better. ÷ floor / reference: the raw-append floor (pre-framed records, bare os.write / os.pread, a dict
index); in the sync row the os.write + os.fdatasync floor; in the open and memory rows a plain dict of the
same keys to ints rebuilt by pickle.loads. In the sync row each store runs its fsync-per-write
configuration (iodict_log sync=True, rocksdict WriteOptions.sync=True, diskcache synchronous=FULL).
"""


def builds(rows: list[dict], args: argparse.Namespace) -> str:
    """Which iodict_log each build's children imported (reported by the children themselves)."""
    seen: dict[str, str] = {}
    for r in rows:
        if r["store"] in BUILDS and r.get("build"):
            seen.setdefault(r["store"], r["build"])
    if not seen:
        return "Builds: no iodict_log build ran."
    lines = ["Builds (as each child reported it: iodict_log.native.build(), the package directory):", ""]
    for name in BUILDS:
        if name in seen:
            where = f" (git {commit_of(args.baseline)})" if name == "iodict_log-base" else ""
            lines.append(f"- {name}: {seen[name]}{where}")
    if seen.get("iodict_log", "").startswith("pure"):
        lines += ["", "The C core is not built here: iodict_log ran pure Python, the same code as iodict_log-pure."]
    return "\n".join(lines)


def commit_of(path: str) -> str:
    """The checked-out commit of a checkout (short), or "unknown" outside git."""
    try:
        done = subprocess.run(
            ["git", "-C", path, "log", "-1", "--format=%h %s"], capture_output=True, text=True, timeout=10, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return done.stdout.strip()[:80]


def versions() -> dict[str, str]:
    found = {"python": platform.python_version(), "sqlite": sqlite3.sqlite_version}
    for dist in DISTRIBUTIONS:
        try:
            found[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            found[dist] = "not installed"
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small and fast (< 60 s): defaults 5,000 keys, 1 run")
    parser.add_argument("--keys", type=int, help="N for most workloads (default 100,000; --quick 5,000)")
    parser.add_argument("--memory-keys", type=int, help="keys of the memory/open workload (1,000,000; --quick 20,000)")
    parser.add_argument("--sync-keys", type=int, help="writes in the sync workload (default 2,000; --quick 300)")
    parser.add_argument("--repeat", type=int, help="runs per figure, median reported (default 3; --quick 1)")
    parser.add_argument("--budget", type=float, help="seconds per timed loop before it stops (5; --quick 1)")
    parser.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="time the loops by wall time (default) or by the child's CPU time, steadier on a busy machine "
        f"(not {' and '.join(bw.WALL_ONLY)}: they wait on the disk or on other processes)",
    )
    parser.add_argument("--only", help="comma-separated stores: " + ",".join(bw.STORES))
    parser.add_argument(
        "--baseline",
        metavar="PATH",
        help="another checkout (a directory holding iodict_log/), run pure as iodict_log-base beside this one",
    )
    parser.add_argument("--workloads", help="comma-separated workloads: " + ",".join(ALL_WORKLOADS))
    parser.add_argument(
        "--targets",
        action="store_true",
        help="only what the targets table needs (defaults of --only and --workloads): the builds, "
        + ", ".join(TARGET_PEERS)
        + "; "
        + ", ".join(TARGET_WORKLOADS),
    )
    parser.add_argument("--out", default=os.path.join(REPO, "bench-results"), help="results directory")
    parser.add_argument("--dir", help="where the stores' files go (default: a temporary directory)")
    args = parser.parse_args()
    quick = args.quick
    for name, full, small in (
        ("keys", 100_000, 5_000),
        ("memory_keys", 1_000_000, 20_000),
        ("sync_keys", 2_000, 300),
        ("repeat", 3, 1),
        ("budget", 5.0, 1.0),
    ):
        if getattr(args, name) is None:
            setattr(args, name, small if quick else full)
    if args.baseline:
        args.baseline = os.path.abspath(args.baseline)
        if not os.path.isfile(os.path.join(args.baseline, "iodict_log", "__init__.py")):
            parser.error(f"--baseline {args.baseline}: no iodict_log/__init__.py there")
    chosen = [s for s in bw.STORES if s in BUILDS or s in TARGET_PEERS or not args.targets]
    only = args.only.split(",") if args.only else [s for s in chosen if args.baseline or s != "iodict_log-base"]
    default_workloads = TARGET_WORKLOADS if args.targets else ALL_WORKLOADS
    workloads = args.workloads.split(",") if args.workloads else list(default_workloads)
    for name in only:
        if name not in bw.STORES:
            parser.error(f"unknown store {name!r}; known: {', '.join(bw.STORES)}")
    if "iodict_log-base" in only and not args.baseline:
        parser.error("iodict_log-base runs the checkout given by --baseline PATH")
    for name in workloads:
        if name not in ALL_WORKLOADS:
            parser.error(f"unknown workload {name!r}; known: {', '.join(ALL_WORKLOADS)}")
    stores = [bw.STORES[name] for name in only]

    started = time.perf_counter()
    found = versions()
    mode = "quick" if quick else "full"
    header = (
        f"iodict_log benchmark ({mode}): N={args.keys:,} (insert_4k N/4, overwrite 10 x N/10), "
        f"memory/open at {args.memory_keys:,} keys{' (--quick: fewer keys than 1,000,000)' if quick else ''}, "
        f"sync writes {args.sync_keys:,}; 100-byte values; median of {args.repeat}; "
        f"time budget {args.budget:g} s per timed loop; {os.cpu_count()} CPUs; "
        + (
            f"timed by CPU time (user + system of the child, all its threads; {', '.join(bw.WALL_ONLY)} by wall time); "
            if args.clock == "cpu"
            else ""
        )
        + ", ".join(f"{k} {v}" for k, v in found.items())
    )
    if found["iodict"] == "not installed":
        header += "\n\niodict 0.0.8 is not installed (pip install iodict==0.0.8 failed?): its rows show n/a."
    print(header, flush=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="iodict-bench-", dir=args.dir) as base:
        for workload in workloads:
            t0 = time.perf_counter()
            for r in run_workload(workload, stores, args, base):
                rows.append({"workload": workload, **r})
            print(f"  {workload}: {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
    wall = time.perf_counter() - started
    table = markdown(rows, args)
    ratios = headline(rows, args)
    goals = targets(rows, args)
    os.makedirs(args.out, exist_ok=True)
    text = f"{header}\n\n{builds(rows, args)}\n"
    if goals:
        caveat = " (--quick: small N, one run; the targets are for a full run)" if quick else ""
        text += f"\nTargets (issue 19): N={args.keys:,}, open and memory at {args.memory_keys:,} keys{caveat}\n\n"
        text += f"{goals}\n\n"
        text += TARGETS_LEGEND
    text += f"\n{table}\n"
    if ratios:
        text += f"\nHeadline: iodict_log ÷ peer, ops/s (> 1: iodict_log faster)\n\n{ratios}\n"
    text += f"\nwall time {wall:.1f} s\n"
    png = chart(rows, args, os.path.join(args.out, "bench.png"))
    with open(os.path.join(args.out, "bench.md"), "w") as f:
        f.write(text)
    with open(os.path.join(args.out, "bench.json"), "w") as f:
        json.dump(
            {
                "date": datetime.datetime.now().isoformat(timespec="seconds"),
                "mode": mode,
                "args": vars(args),
                "versions": found,
                "wall_seconds": wall,
                "results": rows,
            },
            f,
            indent=1,
            default=str,
        )
    print()
    print(text)
    print(f"results: {args.out}/bench.md, bench.json, {os.path.basename(png) if png.endswith('.png') else png}")


if __name__ == "__main__":
    main()
