"""Joining an existing Ray cluster (``distributed.ray_address``): a head started with ``ray start`` in
its own session and temp dir; a driver process joins it, plays the shards on 2 workers there (the
episodes of the in-process path, exactly), and trains an iteration through ``agentrl train`` in which a
worker dies (``rollout/lost_workers`` 1). The head's whole process group is killed at the end."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

pytest.importorskip("ray")

from agentrl.chat import ChatFormat  # noqa: E402
from agentrl.config import load_config  # noqa: E402
from agentrl.metrics import read_metrics  # noqa: E402
from agentrl.models import load_model  # noqa: E402
from agentrl.registry import make  # noqa: E402
from agentrl.rollout import TorchSampler  # noqa: E402
from agentrl.rollout_shards import InProcessRollout  # noqa: E402
from agentrl.runner import Runner  # noqa: E402
from agentrl.train import tasks_for  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
HEAD_CPUS = 3  # not this machine's count: a local cluster started instead would not have it
sys.path.insert(0, str(Path(__file__).resolve().parent))
from ray_cluster_driver import BASE  # noqa: E402


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def head():
    """A Ray head in its own session and temp dir (a short path: Ray's socket names must fit 107 bytes),
    with token authentication and a token of its own; yields (address, temp dir, environment)."""
    temp = tempfile.mkdtemp(prefix="ray", dir="/tmp")
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(16),
           "RAY_USAGE_STATS_ENABLED": "0", "OMP_NUM_THREADS": "1"}
    env.pop("RAY_ADDRESS", None)
    port = _free_port()
    ray_bin = str(Path(sys.executable).parent / "ray")
    cmd = [ray_bin, "start", "--head", "--block", "--port", str(port), "--num-cpus", str(HEAD_CPUS),
           "--include-dashboard", "false", "--disable-usage-stats", "--temp-dir", temp,
           "--object-store-memory", str(128 * 2**20), "--ray-client-server-port", str(_free_port())]
    proc = subprocess.Popen(cmd, env=env, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        yield f"127.0.0.1:{port}", temp, env
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the head and every Ray process it started, nothing else
        proc.wait()
        shutil.rmtree(temp, ignore_errors=True)


def test_a_run_joins_an_existing_cluster(head, tiny_model_dir: Path, tmp_path: Path) -> None:
    address, temp, env = head
    run = tmp_path / "run"
    cmd = [sys.executable, str(ROOT / "tests" / "ray_cluster_driver.py"), address, str(tiny_model_dir),
           str(run), str(tmp_path / "died")]
    done = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=420)
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    # the driver joined the head: its GCS, its session under the head's temp dir, its CPUs
    assert seen["gcs_address"].endswith(f":{address.rsplit(':', 1)[1]}")
    assert seen["session_dir"].startswith(temp) and seen["cpus"] == HEAD_CPUS and seen["nodes"] == 1
    # the episodes of the same shards played in this process
    cfg = load_config(None, [*BASE, f"model.path={tiny_model_dir}"])
    policy, tokenizer = load_model(tiny_model_dir)
    runner = Runner(TorchSampler(policy.eval()), ChatFormat(tokenizer), cfg.to_runner_config())
    local = InProcessRollout(runner, lambda: make(cfg.env.name, **cfg.env.options), 2).run(
        tasks_for(cfg, 1), seed=1234)
    assert seen["episodes"] == [[list(s.token_ids) for s in e.sub_traces] for e in local.episodes]
    assert seen["logprobs"] == [[list(s.logprobs) for s in e.sub_traces] for e in local.episodes]
    # agentrl train on that cluster: a worker died, was replaced, and the metric says so
    assert seen["train_exit"] == 0 and (tmp_path / "died").exists()
    (record,) = read_metrics(run)
    assert record["rollout/lost_workers"] == 1.0 and record["rollout/failed_tasks"] == 0.0
    assert "rollout worker" in done.stderr and "died" in done.stderr
