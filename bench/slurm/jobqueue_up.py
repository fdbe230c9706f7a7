"""dask-jobqueue's SLURMCluster on the local Slurm: time from creating the
cluster (scheduler start) to N workers ready, and to the first result.
Prints one JSON line. Run by bench/compare-slurm.sh."""
import json, sys, time

from dask.distributed import Client
from dask_jobqueue import SLURMCluster

jobs = int(sys.argv[1]) if len(sys.argv) > 1 else 2
partition = sys.argv[2] if len(sys.argv) > 2 else "debug"
t0 = time.perf_counter()
cluster = SLURMCluster(cores=1, processes=1, memory="512MiB", walltime="00:10:00",
                       queue=partition, scheduler_options={"dashboard_address": None})
client = Client(cluster)
cluster.scale(jobs=jobs)
client.wait_for_workers(jobs)
ready = time.perf_counter() - t0
assert client.submit(lambda x: x + 1, 1).result() == 2
first = time.perf_counter() - t0
client.close()
cluster.close()
print(json.dumps({"up_to_ready_s": round(ready, 3), "up_to_first_result_s": round(first, 3), "jobs": jobs}))
