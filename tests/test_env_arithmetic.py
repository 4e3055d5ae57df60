"""arithmetic: the env contract, the expert on easy and hard settings, grading, and answer extraction."""

import re

import pytest
from agentrl.envs.arithmetic import MAX_OPERANDS, MAX_VALUE, Arithmetic, evaluate, last_integer

from agentrl.env import check_env
from agentrl.tools import format_tool_call

EASY = {"num_operands": 2, "max_value": 9}
HARD = {"num_operands": MAX_OPERANDS, "max_value": MAX_VALUE}
PRODUCTS = {"num_operands": MAX_OPERANDS, "max_value": MAX_VALUE, "operators": "*"}  # results near 10**60


@pytest.mark.parametrize("knobs", [EASY, HARD, PRODUCTS], ids=["easy", "hard", "products"])
def test_passes_check_env(knobs: dict) -> None:
    check_env(Arithmetic(**knobs))


@pytest.mark.parametrize("knobs", [EASY, HARD, PRODUCTS], ids=["easy", "hard", "products"])
def test_expert_solves_200_seeds_in_one_turn(knobs: dict) -> None:
    env, solved = Arithmetic(**knobs), 0
    for seed in range(200):
        env.reset(seed=seed)
        result = env.step(env.expert_action())
        assert result.terminated and env.expert_action() is None
        solved += result.reward == 1.0 and result.info["success"] is True
    assert solved >= 198, (knobs, solved)


def test_single_turn_without_tools() -> None:
    env = Arithmetic()
    assert env.tools == () and env.state_digest() is None
    task, info = env.reset(seed=0)
    assert task == f"Compute {env.expression}." and info["task_id"] == "arithmetic:0"
    result = env.step(str(env.result))
    assert result.observation == () and result.info["tool_calls"] == 0 and result.info["final_answer"] is True
    assert (result.reward, result.terminated, result.truncated) == (1.0, True, False)
    with pytest.raises(RuntimeError):
        env.step(str(env.result))


def test_same_seed_same_task_and_seeds_differ() -> None:
    for knobs in ({}, HARD):
        a, b = Arithmetic(**knobs), Arithmetic(**knobs)
        assert [a.reset(seed=s)[0] for s in range(20)] == [b.reset(seed=s)[0] for s in range(20)]
        assert len({a.reset(seed=s)[0] for s in range(200)}) == 200
    # easy has only 10 * 10 * 3 expressions, so seeds repeat some, but not few
    assert len({Arithmetic(**EASY).reset(seed=s)[0] for s in range(200)}) >= 100


@pytest.mark.parametrize("knobs", [EASY, HARD, {"num_operands": 4, "max_value": 5, "operators": "-"}])
def test_expressions_follow_the_knobs_and_match_python(knobs: dict) -> None:
    env = Arithmetic(**knobs)
    k = env.knobs
    for seed in range(100):
        env.reset(seed=seed)
        tokens = env.expression.split(" ")
        operands, operators = [int(t) for t in tokens[::2]], tokens[1::2]
        assert len(operands) == k.num_operands and all(0 <= v <= k.max_value for v in operands)
        assert set(operators) <= set(k.operators)
        assert env.result == eval(env.expression)  # Python's precedence for + - * is the task's


def test_evaluate_by_hand() -> None:
    assert evaluate([2, 3, 4], ["+", "*"]) == 14  # 2 + (3 * 4)
    assert evaluate([2, 3, 4], ["*", "-"]) == 2  # (2 * 3) - 4
    assert evaluate([10, 2, 3], ["-", "-"]) == 5  # left to right: (10 - 2) - 3
    assert evaluate([1, 2, 3, 4], ["-", "*", "+"]) == -1  # 1 - (2 * 3) + 4
    with pytest.raises(ValueError, match="operators"):
        evaluate([1, 2], [])


@pytest.mark.parametrize(
    ("reply", "correct"),
    [("{r}", True), ("The answer is {r}.", True), ("{w}? No: {r}", True), ("{r:,}", True), ("{r}.0", True),
     ("{r}, or maybe {w}", False), ("{w}", False), ("{r}.5", False), ("", False), ("I don't know.", False),
     ("9" * 5000, False)],
)
def test_correct_answer_gets_1_and_wrong_or_unparseable_gets_0(reply: str, correct: bool) -> None:
    env = Arithmetic(num_operands=3, max_value=999, operators="*")
    env.reset(seed=1)
    assert env.result >= 1000  # so that "{r:,}" writes a thousands comma
    result = env.step(reply.format(r=env.result, w=env.result + 1))
    assert result.terminated
    assert (result.reward, result.info["success"]) == (float(correct), correct)


def test_negative_results_are_read_with_their_sign() -> None:
    env = Arithmetic(operators="-")
    env.reset(seed=0)
    assert env.result < 0
    assert env.step(f"It is {env.result}.").reward == 1.0
    env.reset(seed=0)
    assert env.step(f"It is {-env.result}.").reward == 0.0


def test_a_tool_call_is_an_error_and_the_episode_goes_on() -> None:
    env = Arithmetic()
    env.reset(seed=2)
    result = env.step(format_tool_call("calculator", {"expression": env.expression}))
    assert result.info["tool_errors"] == 1 and not result.terminated and result.reward == 0.0
    assert re.match(r"Error: unknown tool 'calculator'", result.observation[0].content)
    assert env.step(env.expert_action()).reward == 1.0


@pytest.mark.parametrize(
    ("text", "value"),
    [("42", 42), ("x = -7", -7), ("\u221215", -15), ("5-2", 2), ("1,234,567", 1234567), ("32.0", 32),
     ("3.5", None), ("ends with 12.", 12), ("no digits", None), ("abc7", None), (str(10**60), 10**60)],
)
def test_last_integer(text: str, value: int | None) -> None:
    assert last_integer(text) == value


def test_reset_options_override_knobs() -> None:
    env = Arithmetic()
    env.reset(seed=0, options={"num_operands": 5})
    assert env.expression.count(" ") == 8  # 5 operands, 4 operators
    env.reset(seed=0)
    assert env.expression.count(" ") == 4
    with pytest.raises(ValueError, match="max_value"):
        env.reset(seed=0, options={"max_value": 0})


@pytest.mark.parametrize(
    ("option", "value"),
    [("num_operands", 1), ("num_operands", MAX_OPERANDS + 1), ("num_operands", 3.0), ("max_value", 0),
     ("max_value", MAX_VALUE + 1), ("max_value", True), ("operators", "/"), ("operators", "++"),
     ("operators", ""), ("operators", ["+"]), ("colour", "red")],
)
def test_bad_options_raise_value_error_naming_them(option: str, value: object) -> None:
    with pytest.raises(ValueError, match=option):
        Arithmetic(**{option: value})
