#!/usr/bin/env python3
"""iodict_log side by side with other Python stores, in one run, on one disk.

Stores (tools/bench_workloads.py, STORES): iodict_log, iodict 0.0.8, diskcache
(Cache, Index, Deque), sqlitedict, persist-queue (Queue, SQLiteQueue), lmdb
(default and sync=False), shelve (dbm.dumb here) and a raw-append floor
(pre-framed records, one os.write each, a dict index). Each store runs every
workload in a fresh child process (multiprocessing, spawn) and a fresh
directory, --repeat times; the median is reported, with the durability of
each store beside it: stores that fsync every write ("fsync/op") are not
comparable with those that don't ("no fsync"), and the table says which is
which. A store that is not installed or fails shows "n/a (why)". Timed loops
stop at --budget seconds (the row then says how many of N ops it did).

    pip install -e '.[bench]'              # the peers, matplotlib
    python tools/bench.py --quick          # < 60 s: small N, 1 run, for before/after a change
    python tools/bench.py                  # full: N=100,000, memory at 1,000,000 keys, 3 runs
    python tools/bench.py --only iodict_log,lmdb-nosync --workloads insert,get --keys 200000

Writes bench.md, bench.json and bench.png (ops/s, log scale) into --out
(default bench-results/ in the repository, git-ignored) and prints the table.
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
import sys
import tempfile
import time

import bench_workloads as bw

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DICT_WORKLOADS = ("insert", "insert_4k", "get", "overwrite", "reopen", "iterate", "memory")
QUEUE_WORKLOADS = ("queue", "queue_2x2")
ALL_WORKLOADS = (*DICT_WORKLOADS[:-1], *QUEUE_WORKLOADS, "sync", "memory")
PREPARED = ("reopen", "memory")  # set up once in a child of their own, then measured --repeat times
HEADLINE = (("insert", ""), ("get", ""), ("queue", "put"), ("queue", "get"), ("sync", ""))
DISTRIBUTIONS = ("iodict_log", "iodict", "diskcache", "sqlitedict", "persist-queue", "lmdb", "matplotlib")


def titles(args: argparse.Namespace) -> dict[tuple[str, str], str]:
    n, m = args.keys, args.memory_keys
    return {
        ("insert", ""): f"insert, {n:,} keys",
        ("insert_4k", ""): f"insert 4 KiB compressible values, {n // 4:,} keys",
        ("get", ""): f"random get, {n:,} keys",
        ("overwrite", ""): f"overwrite: 10 rounds over {n // 10:,} keys",
        ("reopen", ""): f"reopen (open + first get), {n:,} keys",
        ("iterate", ""): f"iteration in the store's order, {n:,} keys",
        ("queue", "put"): f"queue put, {n:,} items",
        ("queue", "get"): f"queue get, {n:,} items",
        ("queue_2x2", ""): f"queue, 2 producer + 2 consumer processes, {n:,} items",
        ("sync", ""): f"fsync-per-write class: sync writes, {args.sync_keys:,} keys",
        ("memory", "open + first get"): f"open + first get, {m:,} keys",
        ("memory", "peak RSS growth per key"): f"peak RSS growth per key (open + {bw.PROBES:,} gets), {m:,} keys",
    }


def sizes(args: argparse.Namespace, workload: str) -> int:
    return {"insert_4k": args.keys // 4, "sync": args.sync_keys, "memory": args.memory_keys}.get(workload, args.keys)


def run_child(store: str, workload: str, path: str, params: dict, timeout: float) -> tuple[str, object]:
    """Run one workload once in a fresh spawned process: ("ok", rows) | ("n/a" | "error", reason)."""
    ctx = multiprocessing.get_context("spawn")
    receiver, sender = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=bw.child, args=(store, workload, path, params, sender))
    proc.start()
    sender.close()
    try:
        if receiver.poll(timeout):
            return receiver.recv()
        return "error", f"timed out after {timeout:.0f} s"
    except EOFError:
        proc.join()
        return "error", f"child died, exit code {proc.exitcode}"
    finally:
        if proc.is_alive():
            proc.kill()
        proc.join()


def roles(store: type[bw.Store], workload: str) -> tuple[str, str, str] | None:
    """(label, durability, n/a reason or "") of a store in a workload, or None if it takes no part."""
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
    entries = {}
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
            "params": {"n": n, "budget": args.budget, "value": bw.small_value()},
            "runs": [],
        }
    timeout = max(120.0, 6 * args.budget + 60)
    for e in entries.values():  # reopen and memory: one setup each, in a child of its own
        if workload in PREPARED and e["status"] == "ok":
            e["path"] = bw.fresh_dir(base, workload, e["store"])
            status, payload = run_child(e["store"], "prep_keys", e["path"], e["params"], 1800)
            if status != "ok":
                e["status"], e["reason"] = status, payload
    for rep in range(args.repeat):
        for e in entries.values():
            if e["status"] != "ok":
                continue
            path = e.get("path") or bw.fresh_dir(base, workload, f"{e['store']}-{rep}")
            status, payload = run_child(e["store"], workload, path, e["params"], timeout)
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
    if "peak_bytes" in extra:
        out.append(f"peak {fmt_bytes(extra['peak_bytes'])}")
    return "; ".join(out)


def ratio(r: dict, reference: dict | None) -> str:
    if reference is None or r is reference or r["status"] != "ok" or reference["status"] != "ok":
        return ""
    return f"{reference['median'] / r['median']:.2f}"


def reference_of(rows: list[dict], workload: str, row: str) -> dict | None:
    return next((r for r in rows if r["workload"] == workload and r["row"] == row and r["store"] == "iodict_log"), None)


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
    head = ["peer"] + [names[c].split(",")[0] for c in cols]
    out = ["| " + " | ".join(head) + " |", "|---" + "|---:" * len(cols) + "|"]
    for label, by_col in peers.items():
        cells = [label]
        for c in cols:
            r = by_col.get(c)
            cells.append(ratio(r, reference_of(rows, *c)) or "n/a" if r else "")
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def bar_color(r: dict) -> str:
    if r["store"] == "iodict_log":
        return "tab:red"
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
    fig.suptitle("iodict_log and peers: red iodict_log, blue no fsync per op, gray fsync per op", fontsize=11)
    fig.tight_layout(rect=(0, 0, 1, 0.98))
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


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
    parser.add_argument("--memory-keys", type=int, help="keys of the memory/open workload (1,000,000; --quick 50,000)")
    parser.add_argument("--sync-keys", type=int, help="writes in the sync workload (default 2,000; --quick 300)")
    parser.add_argument("--repeat", type=int, help="runs per figure, median reported (default 3; --quick 1)")
    parser.add_argument("--budget", type=float, help="seconds per timed loop before it stops (5; --quick 1)")
    parser.add_argument("--only", help="comma-separated stores: " + ",".join(bw.STORES))
    parser.add_argument("--workloads", help="comma-separated workloads: " + ",".join(ALL_WORKLOADS))
    parser.add_argument("--out", default=os.path.join(REPO, "bench-results"), help="results directory")
    parser.add_argument("--dir", help="where the stores' files go (default: a temporary directory)")
    args = parser.parse_args()
    quick = args.quick
    for name, full, small in (
        ("keys", 100_000, 5_000),
        ("memory_keys", 1_000_000, 50_000),
        ("sync_keys", 2_000, 300),
        ("repeat", 3, 1),
        ("budget", 5.0, 1.0),
    ):
        if getattr(args, name) is None:
            setattr(args, name, small if quick else full)
    only = args.only.split(",") if args.only else list(bw.STORES)
    workloads = args.workloads.split(",") if args.workloads else list(ALL_WORKLOADS)
    for name in only:
        if name not in bw.STORES:
            parser.error(f"unknown store {name!r}; known: {', '.join(bw.STORES)}")
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
    os.makedirs(args.out, exist_ok=True)
    text = f"{header}\n\n{table}\n"
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
