"""The ``distributed`` section: defaults (one process, no Ray), every rule's one-line message, round trip."""

import dataclasses
import inspect
import re

import pytest

from agentrl.config import ConfigError, DistributedSection, config_to_dict, dump_config, load_config


def error(overrides: list[str]) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(None, overrides)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_defaults_are_one_process_without_ray() -> None:
    d = load_config(None).distributed
    assert (d.rollout_workers, d.learner_ranks, d.overlap) == (0, 1, False)
    assert (d.ray_address, d.backend) == (None, "gloo")
    assert d.shards == 1  # the runner in process, one seed per iteration, as without the section


def test_shards_follow_the_workers_unless_set() -> None:
    assert load_config(None, ["distributed.rollout_workers=2"]).distributed.shards == 2
    cfg = load_config(None, ["distributed.rollout_workers=2", "distributed.rollout_shards=4"])
    assert cfg.distributed.shards == 4
    assert load_config(None, ["distributed.rollout_shards=3"]).distributed.shards == 3


@pytest.mark.parametrize(
    ("overrides", "start"),
    [
        (["distributed.rollout_workers=-1"], "distributed.rollout_workers: expected an int >= 0, got -1"),
        (["distributed.rollout_shards=0"], "distributed.rollout_shards: expected null or an int >= 1, got 0"),
        (["distributed.worker_cpus=0"], "distributed.worker_cpus: expected a number > 0, got 0.0"),
        (["distributed.worker_timeout_s=-2"], "distributed.worker_timeout_s: expected a number > 0"),
        (["distributed.shard_retries=-1"], "distributed.shard_retries: expected an int >= 0"),
        (["distributed.ray_address=auto"],
         "distributed.ray_address: expected null when rollout_workers is 0"),
        (["distributed.learner_ranks=0"], "distributed.learner_ranks: expected an int >= 1, got 0"),
        (["distributed.backend=mpi"], "distributed.backend: expected one of 'gloo', 'nccl', got 'mpi'"),
        (["distributed.overlap=maybe"], "distributed.overlap: expected true or false, got 'maybe'"),
        (["distributed.rollout_shards=17", "rollout.tasks_per_iteration=16"],
         "distributed.rollout_shards: expected at most rollout.tasks_per_iteration = 16"),
        (["distributed.backend=nccl", "model.device=cpu"],
         "distributed.backend: expected gloo with model.device cpu"),
        (["distributed.workers=2"],
         "unknown key 'distributed.workers' (known: rollout_workers, rollout_shards"),
    ],
)
def test_each_rule_names_its_field(overrides: list[str], start: str) -> None:
    assert error(overrides).startswith(start)


def test_round_trip_through_yaml(tmp_path) -> None:
    cfg = load_config(None, ["distributed.rollout_workers=2", "distributed.learner_ranks=2",
                             "distributed.overlap=true", "distributed.worker_cpus=0.5"])
    path = tmp_path / "c.yaml"
    path.write_text(dump_config(cfg))
    again = load_config(path)
    assert again == cfg and config_to_dict(again)["distributed"]["worker_cpus"] == 0.5


def test_every_field_is_described() -> None:
    doc = inspect.getdoc(DistributedSection) or ""
    described = re.findall(r"^    (\w+): \S", doc.split("Attributes:", 1)[1], flags=re.M)
    assert described == [f.name for f in dataclasses.fields(DistributedSection)]
