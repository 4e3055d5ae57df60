"""graph_nav: the env contract, the expert's success and horizon, determinism and the game's rules."""

import json
import random

import networkx as nx
import pytest
from agentrl.envs.graph_nav import PRESETS, GraphNav, make_knobs

from agentrl.env import StepResult, check_env
from agentrl.tools import format_tool_call


def run_expert(env: GraphNav, seed: int, max_steps: int = 2000) -> tuple[int, list[StepResult]]:
    """Play the expert from reset to the end; return its number of turns and every StepResult."""
    env.reset(seed=seed)
    results = []
    while (action := env.expert_action()) is not None and len(results) < max_steps:
        results.append(env.step(action))
        if results[-1].terminated:
            break
    return len(results), results


def call(env: GraphNav, name: str, **arguments: str) -> StepResult:
    return env.step(format_tool_call(name, arguments))


def walk_to(env: GraphNav, room: str) -> None:
    """Move along the hidden graph's shortest path, as a test-side oracle (never through the goal)."""
    for step in nx.shortest_path(env.world.graph, env.room, room)[1:]:
        assert not call(env, "move", to=step).terminated


@pytest.mark.parametrize("size", ["small", "large"])
def test_passes_check_env(size: str) -> None:
    check_env(GraphNav(size=size))


def test_expert_solves_small_and_large_and_spans_10_to_200_plus_turns() -> None:
    turns: dict[str, list[int]] = {}
    for size in ("small", "large"):
        env, solved, turns[size] = GraphNav(size=size), 0, []
        for seed in range(200):
            n, results = run_expert(env, seed)
            solved += results[-1].terminated and results[-1].info.get("success") is True
            turns[size].append(n)
        assert solved >= 198, (size, solved)
    # small: 5 rooms, so a handful of moves each followed by a look; large: 300 rooms, key and lock far apart
    assert 9 <= min(turns["small"]) and max(turns["small"]) <= 15
    assert sum(n >= 200 for n in turns["large"]) >= 190
    assert max(turns["large"]) >= 400


def test_explorer_expert_solves_without_a_failed_call_and_longer_than_the_oracle() -> None:
    for size in ("small", "medium"):
        medians = {}
        for explores in (False, True):
            env, solved, errors, turns = GraphNav(size=size, expert_explores=explores), 0, 0, []
            for seed in range(200):
                n, results = run_expert(env, seed)
                solved += results[-1].info.get("success") is True
                errors += sum(r.info["tool_errors"] for r in results)
                turns.append(n)
            assert solved >= 198 and errors == 0, (size, explores, solved, errors)
            medians[explores] = sorted(turns)[100]
        # it has to search: no shorter than the oracle, and much longer in the medium maze
        assert medians[True] >= medians[False]
    assert medians[True] > 1.5 * medians[False]


def test_explorer_moves_on_what_it_has_seen_not_on_the_hidden_map() -> None:
    """From the start room (which the task describes), with no key in sight, the explorer walks to the
    first exit by name, wherever the key is; the oracle walks towards the key."""
    differs = 0
    for seed in range(40):
        explorer, oracle = GraphNav(size="medium", expert_explores=True), GraphNav(size="medium")
        explorer.reset(seed=seed)
        oracle.reset(seed=seed)
        if any(t.endswith(" key") for t in explorer._items[explorer.room]):
            continue
        first_exit = sorted(explorer.world.graph[explorer.room])[0]
        if explorer.room == explorer.world.lock_room:
            first_exit = sorted(r for r in explorer.world.graph[explorer.room] if r != explorer.world.goal)[0]
        assert explorer.expert_action() == format_tool_call("move", {"to": first_exit})
        differs += oracle.expert_action() != explorer.expert_action()
    assert differs >= 10


def test_same_seed_same_episode_and_seeds_differ() -> None:
    a, b = GraphNav(size="medium"), GraphNav(size="medium")
    assert a.reset(seed=7)[0] == b.reset(seed=7)[0]
    while (action := a.expert_action()) is not None:
        assert action == b.expert_action()
        ra, rb = a.step(action), b.step(action)
        assert (ra.observation, ra.reward, ra.terminated) == (rb.observation, rb.reward, rb.terminated)
    tasks = {GraphNav(size="medium").reset(seed=s)[0] for s in range(20)}
    assert len(tasks) == 20


def test_verbosity_changes_text_not_world() -> None:
    worlds, tasks = [], []
    for verbosity in ("terse", "normal", "verbose"):
        env = GraphNav(size="medium", verbosity=verbosity)
        tasks.append(env.reset(seed=3)[0])
        worlds.append((sorted(map(sorted, env.world.graph.edges)), env.world.items, env.world.start))
    assert worlds[0] == worlds[1] == worlds[2]
    start = worlds[0][2]
    assert all(start in task for task in tasks)
    assert len(tasks[0]) < len(tasks[1]) < len(tasks[2])


def test_hidden_world_invariants() -> None:
    for seed in range(30):
        env = GraphNav(size="medium")
        env.reset(seed=seed)
        w = env.world
        assert w.graph.number_of_nodes() == 40 and nx.is_connected(w.graph)
        assert list(w.graph[w.goal]) == [w.lock_room]  # the goal hangs off the locked door only
        key_room = w.key_room
        assert w.key in w.items[key_room]
        rest = w.graph.subgraph(set(w.graph) - {w.goal})
        assert nx.has_path(rest, w.start, key_room)
        dist = nx.single_source_shortest_path_length(rest, w.start)
        assert dist[key_room] >= 0.8 * max(dist.values())
        assert sum(len(things) for things in w.items.values()) == 1 + 6


def test_move_errors_locked_door_and_wrong_keys() -> None:
    env = GraphNav(size="medium", distractors=40)
    env.reset(seed=1)
    w = env.world
    far = next(r for r in sorted(w.graph) if r not in w.graph[w.start] and r != w.start)
    bad = call(env, "move", to=far)
    assert bad.info["tool_errors"] == 1 and not bad.terminated
    assert "no passage" in bad.observation[0].content
    wrong_room, wrong_key = next(
        (r, t) for r, things in sorted(w.items.items()) for t in things if t.endswith(" key") and t != w.key
    )
    walk_to(env, w.lock_room)
    locked = call(env, "move", to=w.goal)
    assert "locked" in locked.observation[0].content and not locked.terminated
    assert "no key" in call(env, "unlock", room=w.goal).observation[0].content
    walk_to(env, wrong_room)
    assert call(env, "take", item=wrong_key).info["tool_errors"] == 0
    assert wrong_key in call(env, "inventory").observation[0].content
    walk_to(env, w.lock_room)
    refused = call(env, "unlock", room=w.goal).observation[0].content
    assert "None of your keys" in refused and wrong_key in refused
    # the expert takes over from this state and still gets out
    while (action := env.expert_action()) is not None:
        last = env.step(action)
    assert last.terminated and last.info["success"] is True


def test_expert_recovers_from_a_random_walk() -> None:
    rng = random.Random(0)
    for seed in range(10):
        env = GraphNav(size="medium")
        env.reset(seed=seed)
        for _ in range(30):
            exits = [r for r in env.world.graph[env.room] if r != env.world.goal]
            call(env, "move", to=rng.choice(sorted(exits)))
        n = 0
        while (action := env.expert_action()) is not None and n < 500:
            last, n = env.step(action), n + 1
        assert last.info["success"] is True


def test_step_cost_is_charged_per_tool_call() -> None:
    env = GraphNav(size="small", step_cost=0.01)
    n, results = run_expert(env, seed=4)
    assert sum(r.reward for r in results) == pytest.approx(1.0 - 0.01 * n)


def test_state_digest_tracks_what_the_agent_saw() -> None:
    env = GraphNav(size="small")
    env.reset(seed=3)
    w = env.world
    first = env.state_digest()
    assert f'Room: "{w.start}".' in first and "Inventory: nothing." in first
    while w.key not in env.state_digest():
        env.step(env.expert_action())
    env.step(env.expert_action())  # take
    digest = env.state_digest()
    assert f'Inventory: "{w.key}".' in digest and f'Door "{w.lock_room}" -> "{w.goal}"' in digest


def test_names_in_calls_are_the_tokens_the_observations_showed(tiny_model_dir) -> None:
    """Acting on what was seen is copying tokens: each argument of the expert's calls, as the tokenizer
    splits the call, is a run of tokens of an earlier observation (names are quoted as calls write them)."""
    from agentrl.models import load_model

    tokenizer = load_model(tiny_model_dir)[1]
    for seed in range(5):
        env = GraphNav(size="small", expert_explores=True)
        seen, _ = env.reset(seed=seed)
        seen_ids = tokenizer(seen)["input_ids"]
        while (call := env.expert_action()) is not None:
            args = json.loads(call[call.index("{"):call.rindex("}") + 1])["arguments"]
            call_ids = tokenizer(call)["input_ids"]
            for value in args.values():
                value_ids = tokenizer(json.dumps(value)[1:-1])["input_ids"]
                assert _contains(call_ids, value_ids) and _contains(seen_ids, value_ids), (seed, value)
            result = env.step(call)
            for message in result.observation:
                seen_ids += tokenizer(message.content)["input_ids"]
            if result.terminated:
                break
        assert env.room == env.world.goal


def _contains(ids: list[int], part: list[int]) -> bool:
    return any(ids[i:i + len(part)] == part for i in range(len(ids) - len(part) + 1))


def test_tools_have_schemas_the_model_can_call() -> None:
    names = {t.name for t in GraphNav().tools}
    assert names == {"look", "move", "take", "unlock", "inventory"}
    move = next(t for t in GraphNav().tools if t.name == "move")
    assert move.parameters["required"] == ["to"]
    assert json.dumps(move.schema())


def test_reset_options_override_knobs() -> None:
    env = GraphNav(size="small")
    task, info = env.reset(seed=0, options={"num_rooms": 12})
    assert "12 rooms" in task and env.world.graph.number_of_nodes() == 12
    assert "5 rooms" in env.reset(seed=0)[0]
    with pytest.raises(ValueError, match="num_rooms"):
        env.reset(seed=0, options={"num_rooms": 2})


@pytest.mark.parametrize(
    ("option", "value"),
    [("size", "huge"), ("num_rooms", 3), ("num_rooms", 1001), ("num_rooms", 5.0), ("branching", 1.5),
     ("distractors", -1), ("verbosity", "loud"), ("step_cost", -0.1), ("expert_looks", "yes"),
     ("expert_explores", 1), ("numbered", "no"), ("marked", 1), ("colour", "red")],
)
def test_bad_options_raise_value_error_naming_them(option: str, value: object) -> None:
    with pytest.raises(ValueError, match=option):
        GraphNav(**{option: value})


def test_presets_are_valid() -> None:
    for size in PRESETS:
        assert make_knobs(size).num_rooms == PRESETS[size]["num_rooms"]


def test_errors_echo_the_argument_as_a_json_string() -> None:
    env = GraphNav(size="small")
    env.reset(seed=0)
    result = env.step('<tool_call>{"name": "move", "arguments": {"to": "no\\"where"}}</tool_call>')
    text = result.observation[0].content
    assert 'to "no\\"where"' in text and f'from "{env.room}"' in text


def test_numbered_lists_exits_and_items_and_tools_take_the_numbers() -> None:
    env = GraphNav(size="small", numbered=True, distractors=6)
    for seed in range(100):  # a start in the lock room, with things lying there
        task = env.reset(seed=seed)[0]
        if env.room == env.world.lock_room and env._items[env.room]:
            break
    w = env.world
    passages = sorted(r for r in w.graph[w.lock_room] if r != w.goal)
    listed = ", ".join(f'[{i}] "{r}"' for i, r in enumerate(passages, 1))
    door = f'[{len(passages) + 1}] "{w.goal}"'
    things = list(env._items[env.room])
    assert f"Exits: {listed}. A door to {door} is locked with" in task
    assert f'You see: [1] "{things[0]}"' in task
    # a number takes the item it numbers; a number not listed is an error naming the argument
    assert call(env, "take", item="1").observation[0].content == f'You take the "{things[0]}".'
    bad = call(env, "move", to="9")
    assert bad.info["tool_errors"] == 1
    assert f"to: nothing here is numbered [9]; listed: {listed}, {door}" in bad.observation[0].content
    # the door keeps its number when unlocked; a name still works in place of a number
    env._inventory.append(w.key)
    assert call(env, "unlock", room=str(len(passages) + 1)).info["tool_errors"] == 0
    looked = call(env, "look").observation[0].content
    assert f"Exits: {listed}, {door}. The door to {door} stands unlocked." in looked  # the door is an exit
    terse = GraphNav(size="small", numbered=True, distractors=6, verbosity="terse")
    assert f"exits: {listed} | locked: {door} (" in terse.reset(seed=seed)[0]
    assert call(env, "move", to=passages[0]).info["tool_errors"] == 0
    # without the knob, a number is just a name that no passage has
    plain = GraphNav(size="small")
    plain.reset(seed=seed)
    assert 'no passage' in call(plain, "move", to="1").observation[0].content


@pytest.mark.parametrize("explores", [False, True])
def test_numbered_experts_write_numbers_and_solve_as_before(explores: bool) -> None:
    for seed in range(100):
        named, numbered = GraphNav(size="small", expert_explores=explores), GraphNav(
            size="small", expert_explores=explores, numbered=True)
        n_named, _ = run_expert(named, seed)
        n, results = run_expert(numbered, seed)
        assert n == n_named and results[-1].info.get("success") is True  # the same route, by number
        assert sum(r.info["tool_errors"] for r in results) == 0
    numbered.reset(seed=0)
    args = json.loads(numbered.expert_action().split("\n")[1])["arguments"]
    assert all(value.isdigit() for value in args.values())


@pytest.mark.parametrize("numbered", [False, True])
def test_marked_shows_which_exits_lead_to_visited_rooms(numbered: bool) -> None:
    env = GraphNav(size="small", marked=True, numbered=numbered)
    task = env.reset(seed=3)[0]
    assert "(visited)" not in task  # only the start room is visited, and no room is its own exit
    start = env.room
    first = sorted(env.world.graph[start])[0]
    assert call(env, "move", to=first).info["tool_errors"] == 0
    looked = call(env, "look").observation[0].content
    back = f'"{start}" (visited)'
    assert back in looked and looked.count("(visited)") == 1
    assert ("[" in looked) == numbered
    assert back not in call(env, "move", to="nowhere").observation[0].content  # errors carry no marks
    unmarked = GraphNav(size="small", numbered=numbered)
    unmarked.reset(seed=3)
    call(unmarked, "move", to=first)
    assert call(unmarked, "look").observation[0].content == looked.replace(" (visited)", "")


def test_marked_explorer_walks_through_the_first_unmarked_exit() -> None:
    """While exploring, the explorer's move is the first exit without a mark whenever the room has one."""
    checked = 0
    for seed in range(50):
        env = GraphNav(size="small", marked=True, numbered=True, expert_explores=True)
        env.reset(seed=seed)
        looked = ""
        while (action := env.expert_action()) is not None:
            args = json.loads(action.split("\n")[1])
            w = env.world
            if args["name"] == "move" and looked and w.key not in env._inventory:  # still exploring
                exits = looked.split("Exits: ")[1].split(".")[0].split(", ")
                fresh = [e for e in exits if "(visited)" not in e]
                if fresh:
                    assert fresh[0].startswith(f'[{args["arguments"]["to"]}] '), (seed, looked, action)
                    checked += 1
            result = env.step(action)
            looked = result.observation[0].content if args["name"] == "look" else looked
            if result.terminated:
                break
        assert env.world.goal == env.room
    assert checked > 50
