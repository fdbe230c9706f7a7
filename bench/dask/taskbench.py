"""(n) Task Bench's stencil_1d on Dask: the graph `wrun bench taskbench` runs.

`steps` x `width` busy-wait tasks; task (s, i) depends on (s-1, i-1),
(s-1, i) and (s-1, i+1) where they exist, and answers one more than the
deepest of them, so the last step's answers show the order held. The graph
is a plain dict run with client.get (no fusion: every task is a task). For
each grain the best of --runs gives
    efficiency = steps * width * grain / (wall * worker_threads)
METG(50%) is the smallest grain whose efficiency is still >= 0.5. A cluster
of 2 workers x 1 thread, as in every other script here.
"""
import time

from benchlib import args, emit, load1, start_cluster, stop_cluster


def stencil(grain_us, *inputs):
    end = time.perf_counter() + grain_us / 1e6
    while time.perf_counter() < end:
        pass
    return 1 + max(inputs, default=0)


def graph(steps, width, grain_us, tag):
    dsk = {}
    for s in range(steps):
        for i in range(width):
            deps = [] if s == 0 else [(f"{tag}-{s - 1}", j) for j in (i - 1, i, i + 1) if 0 <= j < width]
            dsk[(f"{tag}-{s}", i)] = (stencil, grain_us, *deps)
    return dsk, [(f"{tag}-{steps - 1}", i) for i in range(width)]


def extra(p):
    p.add_argument("--steps", type=int, default=500)
    p.add_argument("--width", type=int, default=2)
    p.add_argument("--grains", default="10000,3000,1000,300,100")


if __name__ == "__main__":
    a = args(extra)
    threads = 2
    load = load1()
    cluster, client, startup = start_cluster()
    points = []
    try:
        dsk, outs = graph(20, a.width, 0, "warm")
        client.get(dsk, outs)
        for n, d in enumerate(int(g) for g in a.grains.split(",")):
            best = None
            for r in range(a.runs):
                dsk, outs = graph(a.steps, a.width, d, f"g{n}r{r}")
                t0 = time.perf_counter()
                res = client.get(dsk, outs)
                wall = time.perf_counter() - t0
                assert list(res) == [a.steps] * a.width, res
                best = wall if best is None else min(best, wall)
            eff = a.steps * a.width * d / 1e6 / (best * threads)
            points.append({"grain_us": d, "wall_s": round(best, 4), "efficiency": round(eff, 3),
                           "overhead_per_step_us": round(max(0.0, best / a.steps - d / 1e6) * 1e6)})
    finally:
        stop_cluster(cluster, client)
    ok = [p["grain_us"] for p in points if p["efficiency"] >= 0.5]
    emit("taskbench", [{"points": points, "steps": a.steps, "width": a.width,
                        "startup_s": round(startup, 3), "load1_before": load}],
         summary={"metg50_us": min(ok) if ok else None,
                  "note": "stencil_1d, best of --runs per grain; smallest grain with efficiency >= 0.5"})
