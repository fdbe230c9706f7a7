"""Prints wrun's `bench cluster` figures next to the Dask reference scripts'
(medians), with the ratio and the target from issue 4. Usage:
python3 bench/compare.py DIR, where DIR holds dask-*.json and wrun.json."""
import json
import sys
from pathlib import Path

out = Path(sys.argv[1])
wrun = json.loads((out / "wrun.json").read_text())


def dask(name):
    path = out / f"dask-{name}.json"
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text().strip().splitlines()[-1])
    except (ValueError, IndexError):
        return None


def get(doc, *keys):
    for key in keys:
        if doc is None or key not in doc:
            return None
        doc = doc[key]
    return doc


rows = [
    # (what, dask figure, wrun figure, higher is better, target)
    ("start-up: 2 workers ready (s)", get(dask("startup"), "median", "startup_s"), wrun["start_s"], False, "<= 1/5 of Dask"),
    ("seed graph, 768 tasks (s)", get(dask("seed_graph"), "median", "compute_s"), wrun["seed_graph_s"], False, ">= 10x faster"),
    ("no-op map 10k (s)", get(dask("noop_10k"), "by_size", "10000", "median", "wall_s"), wrun["noop_map_10k_s"], False, ""),
    ("no-op map 100k (s)", get(dask("noop_100k"), "by_size", "100000", "median", "wall_s"), wrun["noop_map_100k_s"], False, ""),
    ("no-op tasks/s (100k)", get(dask("noop_100k"), "by_size", "100000", "median", "tasks_per_s"), wrun["noop_tasks_per_s"], True, ">= 20x and >= 50,000/s"),
    ("chain of 10k (s)", get(dask("chain"), "median", "compute_s"), wrun["chain_10k_s"], False, ">= 10x faster"),
    ("tree sum 10k leaves (s)", get(dask("tree_reduce"), "median", "compute_s"), wrun["tree_sum_10k_s"], False, ""),
    ("darts 100 x 1M (s)", get(dask("darts"), "median", "wall_s"), wrun["darts_100x1m_s"], False, ">= 10x faster"),
    ("64 MiB worker to worker (MB/s)", get(dask("data_transfer"), "median", "pinned_consumer_MBps"), wrun["transfer_64mib_mb_s"], True, ">= 1 GB/s"),
    ("scheduler bytes per queued task", get(dask("noop_100k"), "by_size", "100000", "median", "main_growth_bytes_per_task"), wrun["scheduler_bytes_per_queued_task"], False, "<= 256 B"),
    ("METG(50%) (us)", get(dask("metg"), "metg50_us"), wrun["metg50_us"], False, "<= 20 us"),
]

def wrun_file(name):
    path = out / f"wrun-{name}.json"
    try:
        return json.loads(path.read_text().strip().splitlines()[-1])
    except (OSError, ValueError, IndexError):
        return None


cost = {c["workers"]: c for c in (get(wrun_file("scheduler-cost"), "scheduler_cost") or [])}
million = wrun_file("million")
rows += [
    ("stencil_1d METG(50%), 2x1 (us)", get(dask("taskbench"), "metg50_us"), get(wrun_file("taskbench"), "metg50_us"), False, "<= 50 us"),
    ("no-op map 100k, 32 workers (s)", get(dask("noop_100k_32w"), "by_size", "100000", "median", "wall_s"), get(cost.get(32), "wall_s"), False, ""),
    ("scheduler CPU/task 32w / 2w", None, (get(cost.get(32), "us_per_task") or 0) / (get(cost.get(2), "us_per_task") or 1) if cost.get(32) and cost.get(2) else None, False, "<= 2"),
    ("1M map from the shell (s)", None, get(million, "wall_s"), False, "<= 5 s"),
    ("1M map: scheduler peak RSS (MiB)", None, get(million, "scheduler_peak_rss_mib"), False, "<= 256 MB"),
    ("1M map: client peak RSS (MiB)", None, get(million, "client_peak_rss_mib"), False, "<= 256 MB"),
]

print(f"{'measure':<34} {'Dask':>12} {'wrun':>12} {'wrun better by':>15}  target")
for what, d, w, higher, target in rows:
    if d is None or w is None or not d or not w:
        ratio = "n/a"
    else:
        ratio = f"{(w / d if higher else d / w):.1f}x"
    fmt = lambda x: "n/a" if x is None else (f"{x:.4g}" if isinstance(x, float) else str(x))
    print(f"{what:<34} {fmt(d):>12} {fmt(w):>12} {ratio:>15}  {target}")
