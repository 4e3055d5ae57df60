"""gym: the env contract for each game, the expert against breadth-first search, the board, and the extra."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from agentrl.env import StepResult, check_env
from agentrl.tools import format_tool_call
from envs.gym_adapter import GymTextEnv

needs_gym = pytest.mark.skipif(importlib.util.find_spec("gymnasium") is None, reason="needs gymnasium")

# (game, constructor options); "Taxi" is resolved to the installed gymnasium's Taxi id
GAMES = {
    "lake4": ("FrozenLake-v1", {}),
    "lake8": ("FrozenLake8x8-v1", {}),
    "random4": ("FrozenLake-v1", {"random_map_size": 4}),
    "random8": ("FrozenLake-v1", {"random_map_size": 8}),
    "taxi": ("Taxi", {}),
    "cliff": ("CliffWalking-v1", {}),
}


def make(key: str) -> GymTextEnv:
    game, options = GAMES[key]
    if game == "Taxi":
        import gymnasium

        game = max(k for k in gymnasium.registry if k.startswith("Taxi-"))
    return GymTextEnv(game, **options)


def move(env: GymTextEnv, direction: object) -> StepResult:
    return env.step(format_tool_call("move", {"direction": direction}))


def run_expert(env: GymTextEnv, seed: int) -> list[StepResult]:
    """Play the expert from reset to the end; return every StepResult."""
    env.reset(seed=seed)
    results = []
    while (action := env.expert_action()) is not None and len(results) < 500:
        results.append(env.step(action))
    return results


def shortest_solution(env: GymTextEnv) -> int:
    """The fewest actions from the current state to success, by breadth-first search over the game's
    own (deterministic) transition table: the slow, obvious version of the expert's value iteration."""
    raw = env._game.unwrapped
    cells = b"".join(b"".join(row) for row in raw.desc.tolist()) if env.family == "FrozenLake" else b""
    frontier, seen, depth = [int(env._state)], {int(env._state)}, 0
    while frontier:
        depth, later = depth + 1, []
        for state in frontier:
            for [(_, nxt, _, terminated)] in raw.P[state].values():
                if terminated and (env.family != "FrozenLake" or cells[int(nxt)] == ord("G")):
                    return depth
                if not terminated and int(nxt) not in seen:
                    seen.add(int(nxt))
                    later.append(int(nxt))
        frontier = later
    raise AssertionError("no way to succeed")


@needs_gym
@pytest.mark.parametrize("key", list(GAMES))
def test_passes_check_env(key: str) -> None:
    check_env(make(key))


@needs_gym
@pytest.mark.parametrize("key", list(GAMES))
def test_expert_solves_200_seeds_by_a_shortest_route(key: str) -> None:
    env, solved = make(key), 0
    for seed in range(200):
        env.reset(seed=seed)
        fewest = shortest_solution(env)
        results = run_expert(env, seed)
        assert len(results) == fewest, (key, seed)
        assert [r.reward for r in results[:-1]] == [0.0] * (len(results) - 1)  # the game's rewards stay out
        solved += results[-1].reward == 1.0 and results[-1].info.get("success") is True
    assert solved >= 198, (key, solved)


@needs_gym
def test_fixed_maps_take_the_known_number_of_moves() -> None:
    # 4x4: down, down, right, down, right, right... any route of 6; 8x8: 7 + 7; cliff: up, 11 right, down
    for key, moves in (("lake4", 6), ("lake8", 14), ("cliff", 13)):
        assert len(run_expert(make(key), seed=0)) == moves


@needs_gym
@pytest.mark.parametrize("key", ["taxi", "random8"])
def test_same_seed_same_episode_and_seeds_differ(key: str) -> None:
    a, b = make(key), make(key)
    assert a.reset(seed=11) == b.reset(seed=11)
    while (action := a.expert_action()) is not None:
        assert action == b.expert_action()
        ra, rb = a.step(action), b.step(action)
        assert (ra.observation, ra.reward, ra.terminated) == (rb.observation, rb.reward, rb.terminated)
    tasks = {a.reset(seed=s)[0] for s in range(200)}
    # random 8x8 maps never repeat; Taxi has 300 start states, so 200 seeds hit well over 100 of them
    assert len(tasks) == 200 if key == "random8" else len(tasks) > 100


@needs_gym
def test_fixed_maps_are_the_same_task_for_every_seed() -> None:
    # documented: without random_map_size only Taxi's start varies, so a seed changes nothing here
    for key in ("lake4", "cliff"):
        env = make(key)
        assert len({env.reset(seed=s)[0] for s in range(10)}) == 1


@needs_gym
def test_board_follows_the_moves_on_frozen_lake() -> None:
    env = make("lake4")
    task, _ = env.reset(seed=0)
    assert task.endswith("\n@FFF\nFHFH\nFFFH\nHFFG")
    bump = move(env, "up")
    assert bump.observation[0].content.startswith("You cannot move up from here; you stay in place.")
    assert bump.observation[0].content.endswith("\n@FFF\nFHFH\nFFFH\nHFFG") and bump.info["tool_errors"] == 0
    right = move(env, "right").observation[0].content
    assert right == "You move right. Game reward +0 (total +0).\nS@FF\nFHFH\nFFFH\nHFFG"
    assert env.state_digest().endswith("Moves made: 2. Game reward so far: +0.\nS@FF\nFHFH\nFFFH\nHFFG")
    hole = move(env, "down")
    assert hole.observation[0].content.startswith("You fell into a hole.")
    assert hole.observation[0].content.endswith("\nSFFF\nF@FH\nFFFH\nHFFG")
    assert (hole.reward, hole.terminated, hole.info["success"]) == (0.0, True, False)


@needs_gym
def test_cliff_sends_the_agent_back_to_the_start() -> None:
    env = make("cliff")
    env.reset(seed=0)
    move(env, "up")
    assert env.board().splitlines()[2:] == ["@...........", "SCCCCCCCCCCG"]
    move(env, "down")  # back onto S, which is safe
    fell = move(env, "right")  # onto the cliff
    text = fell.observation[0].content
    assert text.startswith("You fell off the cliff and are back at the start. Game reward -100 (total -102).")
    assert text.endswith("\n............\n@CCCCCCCCCCG") and not fell.terminated and fell.reward == 0.0
    results = [env.step(a) for a in iter(env.expert_action, None)]
    assert results[-1].info["success"] is True and sum(r.reward for r in results) == 1.0


@needs_gym
def test_taxi_board_pickup_and_dropoff() -> None:
    env = make("taxi")
    assert {t.name for t in env.tools} == {"move", "pickup", "dropoff"}
    task, _ = env.reset(seed=0)
    rows = task.splitlines()
    assert rows[4] == "| : : : :@|" and rows[-1] == "Passenger: waiting at R. Destination: B."
    wrong = env.step(format_tool_call("pickup", {}))
    assert wrong.observation[0].content.startswith("You cannot pickup here. Game reward -10 (total -10).")
    assert not wrong.terminated and wrong.info["tool_errors"] == 0
    up = move(env, "up").observation[0].content.splitlines()
    assert up[3:5] == ["| : | : :@|", "| : : : : |"]
    last = [env.step(a) for a in iter(env.expert_action, None)][-1]
    assert last.observation[0].content.startswith("Delivered") and last.info["success"] is True


@needs_gym
@pytest.mark.parametrize("direction", ["north", "diagonal", 3, None])
def test_an_invalid_move_is_an_error_observation(direction: object) -> None:
    env = make("lake4")
    env.reset(seed=0)
    result = move(env, direction)
    assert result.info["tool_errors"] == 1 and not result.terminated
    assert result.observation[0].content.startswith("Error: tool 'move'")
    assert env.state_digest().startswith("Moves made: 0.")
    for bad in ('<tool_call>{"name": "move", "arguments": {}}</tool_call>', format_tool_call("pickup", {})):
        assert env.step(bad).info["tool_errors"] == 1
    assert run_expert(env, seed=0)[-1].info["success"] is True


@needs_gym
def test_running_out_of_moves_is_a_truncation_without_success() -> None:
    env = make("lake4")  # Gymnasium's TimeLimit: 100 moves
    env.reset(seed=0)
    results = [move(env, "left") for _ in range(100)]
    assert not any(r.terminated or r.truncated for r in results[:-1])
    assert "Out of moves: the game stops after 100 moves." in results[-1].observation[0].content
    last = results[-1]
    assert (last.reward, last.terminated, last.truncated, last.info["success"]) == (0.0, False, True, False)


@needs_gym
def test_random_maps_keep_one_value_table() -> None:
    env = make("random4")
    for seed in range(20):
        run_expert(env, seed)
    assert len(env._values) == 1  # one per current map, not one per episode ever played


@needs_gym
@pytest.mark.parametrize(
    ("kwargs", "option"),
    [({"game": "Pong-v5"}, "game"), ({"game": "FrozenLake-v0"}, "game"), ({"game": 3}, "game"),
     ({"random_map_size": 1}, "random_map_size"), ({"random_map_size": True}, "random_map_size"),
     ({"random_map_size": 4, "map_name": "4x4"}, "random_map_size"),
     ({"game": "CliffWalking-v1", "random_map_size": 4}, "random_map_size"),
     ({"colour": "red"}, "colour"), ({"map_name": "9x9"}, "map_name")],
)
def test_bad_options_raise_value_error_naming_them(kwargs: dict, option: str) -> None:
    with pytest.raises(ValueError, match=option):
        GymTextEnv(**kwargs)


@needs_gym
def test_reset_options_are_refused() -> None:
    with pytest.raises(ValueError, match="options"):
        make("lake4").reset(seed=0, options={"map_name": "8x8"})


def test_registration_works_without_gymnasium() -> None:
    code = """
import sys
sys.modules["gymnasium"] = None  # makes `import gymnasium` raise ImportError
from agentrl.registry import Registry
from envs import register_builtin
registry = Registry(load_entry_points=False)
register_builtin(registry)
print(sorted(name for name, _ in registry.list_envs()))
registry.make("ledger")
try:
    registry.make("gym")
except ValueError as e:
    print(f"ValueError: {e}")
"""
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [
        "['arithmetic', 'code_fix', 'graph_nav', 'gym', 'ledger']",
        "ValueError: env: 'gym' needs a package that is not installed (the gym environment needs "
        "gymnasium: pip install 'gymnasium>=1.0' (in a clone of agentrl: pip install -e '.[gym]'))",
    ]
