"""ledger: the env contract, the expert at 5 and 200 records, determinism, and the rules of the table."""

import re

import pytest
from agentrl.envs.ledger import MAX_RECORDS, MIN_RECORDS, Ledger, answer_for, index_ranges

from agentrl.env import StepResult, check_env
from agentrl.tools import format_tool_call

FIELDS = re.compile(r"^Record (\d+): vendor=[^,]+, category=(\w+), amount=(\d+), date=", re.MULTILINE)


def run_expert(env: Ledger, seed: int) -> list[StepResult]:
    """Play the expert from reset to the end; return every StepResult."""
    env.reset(seed=seed)
    results = []
    while (action := env.expert_action()) is not None and len(results) <= MAX_RECORDS + 1:
        results.append(env.step(action))
    return results


def call(env: Ledger, name: str, **arguments: object) -> StepResult:
    return env.step(format_tool_call(name, arguments))


def read_table(env: Ledger, skip: int | None = None) -> dict[int, tuple[str, int]]:
    """A test-side agent: read every record but ``skip`` through the tool; parse (category, amount)."""
    seen = {}
    for i in range(env.knobs.num_records):
        if i != skip:
            text = call(env, "read", index=i).observation[0].content
            index, category, amount = FIELDS.match(text).groups()
            seen[int(index)] = (category, int(amount))
    return seen


def answer_from(seen: dict[int, tuple[str, int]], question: str, category: str) -> int:
    amounts = [a for c, a in seen.values() if c == category]
    return {"sum": sum(amounts), "count": len(amounts), "max": max(amounts, default=0)}[question]


@pytest.mark.parametrize(
    "knobs", [{"num_records": 5}, {"num_records": 200, "verbosity": "verbose", "question": "mixed"}]
)
def test_passes_check_env(knobs: dict) -> None:
    check_env(Ledger(**knobs))


@pytest.mark.parametrize("num_records", [MIN_RECORDS, MAX_RECORDS])
def test_expert_solves_200_seeds_reading_every_record(num_records: int) -> None:
    env, solved = Ledger(num_records=num_records, verbosity="terse", question="mixed"), 0
    for seed in range(200):
        results = run_expert(env, seed)
        assert len(results) == num_records + 1  # N reads, then one submit
        assert [r.reward for r in results[:-1]] == [0.0] * num_records
        solved += results[-1].reward == 1.0 and results[-1].info.get("success") is True
    assert solved >= 198, (num_records, solved)


def test_same_seed_same_episode_and_seeds_differ() -> None:
    a, b = Ledger(question="mixed"), Ledger(question="mixed")
    assert a.reset(seed=7) == b.reset(seed=7)
    while (action := a.expert_action()) is not None:
        assert action == b.expert_action()
        ra, rb = a.step(action), b.step(action)
        assert (ra.observation, ra.reward, ra.terminated) == (rb.observation, rb.reward, rb.terminated)
    # the task text names only a category and a question, so it repeats; the hidden table never does
    tables, task_ids = set(), set()
    for seed in range(200):
        task, info = a.reset(seed=seed)
        tables.add(tuple(a.records))
        task_ids.add(info["task_id"])
    assert len(tables) == len(task_ids) == 200


@pytest.mark.parametrize("question", ["sum", "count", "max"])
def test_an_answer_that_skips_a_record_is_wrong(question: str) -> None:
    env = Ledger(num_records=30, question=question)
    for seed in range(20):
        env.reset(seed=seed)
        # skip the matching record that decides the answer: any for sum and count, the largest for max
        matching = [r for r in env.records if r.category == env.category]
        skip = max(matching, key=lambda r: r.amount).index
        if question == "max" and sum(r.amount == env.records[skip].amount for r in matching) > 1:
            continue  # a tie: another record holds the same maximum
        partial = answer_from(read_table(env, skip=skip), question, env.category)
        assert partial != env.answer
        result = call(env, "submit", answer=partial)
        assert (result.reward, result.terminated, result.info["success"]) == (0.0, True, False)
        # with nothing skipped, the same agent reading only the observations is right
        env.reset(seed=seed)
        full = answer_from(read_table(env), question, env.category)
        assert call(env, "submit", answer=full).info["success"] is True


def test_every_matching_record_changes_a_sum_or_count() -> None:
    for seed in range(50):
        env = Ledger(num_records=40)
        env.reset(seed=seed)
        for r in env.records:
            rest = [x for x in env.records if x is not r]
            for question in ("sum", "count"):
                full = answer_for(question, env.category, env.records)
                assert (answer_for(question, env.category, rest) != full) == (r.category == env.category)


@pytest.mark.parametrize("verbosity", ["terse", "normal", "verbose"])
def test_observations_carry_the_answer_at_every_verbosity(verbosity: str) -> None:
    env = Ledger(num_records=12, verbosity=verbosity, question="mixed")
    for seed in range(10):
        env.reset(seed=seed)
        seen = read_table(env)
        assert seen == {r.index: (r.category, r.amount) for r in env.records}
        assert call(env, "submit", answer=answer_from(seen, env.question, env.category)).reward == 1.0


def test_verbosity_changes_text_not_table() -> None:
    tables, texts = [], []
    for verbosity in ("terse", "normal", "verbose"):
        env = Ledger(verbosity=verbosity)
        env.reset(seed=3)
        tables.append((env.records, env.category, env.answer))
        texts.append(call(env, "read", index=0).observation[0].content)
    assert tables[0] == tables[1] == tables[2]
    assert len(texts[0]) < len(texts[1]) < len(texts[2])
    assert texts[2].startswith(texts[1]) and texts[1].startswith(texts[0])


@pytest.mark.parametrize("index", [-1, 20, 10**6])
def test_read_out_of_range_is_an_error_observation(index: int) -> None:
    env = Ledger(num_records=20)
    env.reset(seed=0)
    result = call(env, "read", index=index)
    assert result.info["tool_errors"] == 1 and not result.terminated and result.reward == 0.0
    assert result.observation[0].content.startswith("Error") and "0 to 19" in result.observation[0].content
    assert env.state_digest().startswith("Records read (0 of 20): none; next to read: 0.")
    while (action := env.expert_action()) is not None:
        last = env.step(action)
    assert last.info["success"] is True


@pytest.mark.parametrize("arguments", [{"index": "3"}, {"index": 2.5}, {}, {"index": 1, "page": 2}])
def test_read_with_bad_arguments_is_an_error_observation(arguments: dict) -> None:
    env = Ledger()
    env.reset(seed=0)
    result = env.step(format_tool_call("read", arguments))
    assert result.info["tool_errors"] == 1 and not result.terminated
    assert "Expected read(index: an integer)" in result.observation[0].content


def test_wrong_submit_gives_zero_and_ends_the_episode() -> None:
    env = Ledger()
    env.reset(seed=1)
    result = call(env, "submit", answer=env.answer + 1)
    assert (result.reward, result.terminated, result.info["success"]) == (0.0, True, False)
    assert "Incorrect" in result.observation[0].content
    with pytest.raises(RuntimeError):
        call(env, "submit", answer=env.answer)


def test_there_is_one_submission_per_episode() -> None:
    env = Ledger()
    env.reset(seed=2)
    wrong, right = (format_tool_call("submit", {"answer": a}) for a in (env.answer - 1, env.answer))
    result = env.step(wrong + "\n" + right)
    assert result.reward == 0.0 and result.info["success"] is False
    assert result.observation[1].content.startswith("Not run: the episode ended")


@pytest.mark.parametrize(
    ("reply", "correct"),
    [("The total is {a}.", True), ("{w} ... no, {a}", True), ("{a}, or maybe {w}", False),
     ("I cannot tell.", False), ("9" * 5000, False)],
)
def test_a_reply_without_a_tool_call_is_graded_as_a_submission(reply: str, correct: bool) -> None:
    env = Ledger()
    env.reset(seed=4)
    result = env.step(reply.format(a=env.answer, w=env.answer + 7))
    assert result.terminated and result.info["final_answer"] is True
    assert (result.reward, result.info["success"]) == (float(correct), correct)


def test_state_digest_tracks_reads_and_the_running_value() -> None:
    env = Ledger(num_records=10, question="sum")
    env.reset(seed=5)
    for i in (0, 1, 2, 5):
        call(env, "read", index=i)
    running = sum(env.records[i].amount for i in (0, 1, 2, 5) if env.records[i].category == env.category)
    assert env.state_digest() == (
        f"Records read (4 of 10): 0-2, 5; next to read: 3.\n"
        f"Category {env.category}, running total over the records read: {running}."
    )
    assert env.expert_action() == format_tool_call("read", {"index": 3})


def test_index_ranges() -> None:
    assert index_ranges({0, 1, 2, 5, 7, 8}) == "0-2, 5, 7-8"
    assert index_ranges({4}) == "4" and index_ranges(set()) == "none"


def test_tools_and_task_text() -> None:
    env = Ledger(num_records=12, question="count")
    assert [t.name for t in env.tools] == ["read", "submit"]
    task, info = env.reset(seed=0)
    question = f"How many records have category {env.category}?"
    assert task == f"The ledger has 12 records, numbered 0 to 11. {question} Submit one integer."
    assert info["task_id"] == "ledger:0"


def test_reset_options_override_knobs() -> None:
    env = Ledger()
    task, info = env.reset(seed=0, options={"num_records": 7})
    assert "7 records" in task and len(env.records) == 7 and info["task_id"].startswith("ledger:0:")
    assert "20 records" in env.reset(seed=0)[0]
    with pytest.raises(ValueError, match="num_records"):
        env.reset(seed=0, options={"num_records": 201})


@pytest.mark.parametrize(
    ("option", "value"),
    [("num_records", 4), ("num_records", 201), ("num_records", 20.0), ("num_records", True),
     ("verbosity", "loud"), ("question", "median"), ("colour", "red")],
)
def test_bad_options_raise_value_error_naming_them(option: str, value: object) -> None:
    with pytest.raises(ValueError, match=option):
        Ledger(**{option: value})
