"""Driver run in a subprocess by test_two_node_cluster: a 2-worker Ray Train run on the
cluster at argv[1]; each worker writes what it saw to ``<argv[3]>/worker-<rank>.json`` (the
nodes share this machine's file system), the driver prints one ``RESULT`` JSON line."""

from __future__ import annotations

import json
import sys

import ray
import ray.train
import torch
import torch.distributed as dist
from ray.train.torch import TorchTrainer


def loop(config: dict) -> None:
    ctx = ray.train.get_context()
    rank = ctx.get_world_rank()
    t = torch.tensor([float(rank + 1)])
    dist.all_reduce(t)  # gloo across the two raylets
    ray.train.report({"rank": rank, "node_id": ray.get_runtime_context().get_node_id(),
                      "allreduce": float(t.item()), "world": ctx.get_world_size(),
                      "epoch": 1})
    # every rank's own record (Ray Train keeps only rank 0's reported metrics)
    with open(f"{config['out']}/worker-{rank}.json", "w", encoding="utf-8") as fh:
        json.dump({"rank": rank, "node_id": ray.get_runtime_context().get_node_id(),
                   "allreduce": float(t.item()), "world": ctx.get_world_size()}, fh)


def main() -> None:
    address, storage, out = sys.argv[1], sys.argv[2], sys.argv[3]
    ray.init(address=address, logging_level="ERROR")

    @ray.remote(num_cpus=0)
    def nodes() -> list[dict]:
        return [n for n in ray.nodes() if n["Alive"]]

    trainer = TorchTrainer(
        loop,
        train_loop_config={"out": out},
        scaling_config=ray.train.ScalingConfig(num_workers=2, use_gpu=False,
                                               resources_per_worker={"CPU": 1}),
        run_config=ray.train.RunConfig(storage_path=storage, name="two-node"),
    )
    result = trainer.fit()
    print("RESULT " + json.dumps({"error": None if result.error is None else str(result.error),
                                  "nodes": [{"id": n["NodeID"], "resources": n["Resources"]}
                                            for n in ray.get(nodes.remote())]}), flush=True)
    ray.shutdown()


if __name__ == "__main__":
    main()
