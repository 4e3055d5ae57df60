"""The driver of tests/test_ray_cluster.py, run in its own process (a fresh Ray client, the environment
the test gives it): joins the Ray cluster at ``address``, plays one iteration's shards on 2 rollout
workers there, then trains one iteration through ``agentrl train`` on the same cluster with a worker
that dies; prints what it saw as one JSON line.

    python tests/ray_cluster_driver.py ADDRESS MODEL_DIR RUN_DIR MARKER
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BASE = ["rollout.tasks_per_iteration=4", "rollout.group_size=2", "rollout.max_response_tokens=12",
        "rollout.max_concurrent=8", "distributed.worker_cpus=0.5", "distributed.rollout_workers=2"]


def main(address: str, model_dir: str, run_dir: str, marker: str) -> None:
    import ray

    from agentrl.cli import main as cli
    from agentrl.config import load_config
    from agentrl.models import load_model
    from agentrl.ray_rollout import RayRollout
    from agentrl.train import tasks_for

    cfg = load_config(None, [*BASE, f"model.path={model_dir}", f"distributed.ray_address={address}"])
    pool = RayRollout(cfg, model_dir, load_model(model_dir)[0])
    try:
        result = pool.run(tasks_for(cfg, 1), seed=1234)
    finally:
        pool.close()
    seen = {
        "gcs_address": ray.get_runtime_context().gcs_address,
        "session_dir": ray._private.worker._global_node.get_session_dir_path(),
        "cpus": ray.cluster_resources().get("CPU", 0),
        "nodes": len(ray.nodes()),
        "episodes": [[list(s.token_ids) for s in e.sub_traces] for e in result.episodes],
        "logprobs": [[list(s.logprobs) for s in e.sub_traces] for e in result.episodes],
    }
    # agentrl train on the same cluster, one worker dying at the reset of the iteration's last task
    die = tasks_for(cfg, 1)[-1].seed
    sets = [*BASE, f"distributed.ray_address={address}", "env.name=faulty_envs:DyingArithmetic",
            f"env.options.die_seed={die}", f"env.options.marker={marker}", "run.checkpoint_every=0"]
    argv = ["train", "--config", str(ROOT / "examples" / "grpo_arithmetic.yaml"), "--run-dir", run_dir,
            "--quiet", "--iterations", "1"]
    seen["train_exit"] = cli(argv + [x for s in sets for x in ("--set", s)])
    print(json.dumps(seen))


if __name__ == "__main__":
    main(*sys.argv[1:5])
