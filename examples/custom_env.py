"""A tool environment built from nothing: guess a hidden number from "higher" / "lower" hints.

This is the code of the tutorial in docs/envs.md, in one file. Run it as a script to check the
environment with ``check_env`` and to watch the expert play a few seeds:

    .venv/bin/python examples/custom_env.py
"""

import random

from agentrl.env import ToolEnv, check_env
from agentrl.registry import list_envs, make, register
from agentrl.tools import format_tool_call, tool


class GuessNumber(ToolEnv):
    """Find a hidden number from 1 to ``max_number``; each guess is answered "higher" or "lower"."""

    name = "guess_number"
    description = "Find a hidden number from higher/lower hints (binary search, a few turns)."
    system_prompt = (
        "You play a guessing game with tools. Call guess with a number; the answer says whether the "
        "hidden number is higher or lower. Find it in as few guesses as you can."
    )

    def __init__(self, max_number: int = 100, step_cost: float = 0.01, reminders: int = 0) -> None:
        super().__init__()
        if not isinstance(max_number, int) or isinstance(max_number, bool) or max_number < 2:
            raise ValueError(f"max_number: expected an int >= 2, got {max_number!r}")
        if not isinstance(step_cost, int | float) or not 0 <= step_cost < 1:
            raise ValueError(f"step_cost: expected a number in [0, 1), got {step_cost!r}")
        if not isinstance(reminders, int) or isinstance(reminders, bool) or reminders < 0:
            raise ValueError(f"reminders: expected an int >= 0, got {reminders!r}")
        self.max_number = max_number
        self.step_cost = float(step_cost)
        self.reminders = reminders

    def setup(self, rng: random.Random, options: dict) -> str:
        """Draw the hidden number from the seeded ``rng``; return the task text."""
        self.secret = rng.randint(1, self.max_number)
        self.low, self.high = 1, self.max_number  # the range the hints so far leave open
        self.guesses = 0
        self.done = False
        self.reminders_left = self.reminders
        return f"I am thinking of a number from 1 to {self.max_number}. Find it."

    @tool
    def guess(self, number: int) -> str:
        """Guess the hidden number.

        Args:
            number: your guess, from 1 to the largest possible number.
        """
        if not 1 <= number <= self.max_number:
            raise ValueError(f"number: expected 1 to {self.max_number}, got {number}")
        self.guesses += 1
        self.add_reward(-self.step_cost)
        if number == self.secret:
            self.done = True
            self.finish(1.0, success=True)
            return f"Yes, the number is {number}."
        if number < self.secret:
            self.low = max(self.low, number + 1)
            return f"Higher than {number}."
        self.high = min(self.high, number - 1)
        return f"Lower than {number}."

    @tool
    def give_up(self) -> str:
        """Stop guessing; the game ends without the reward."""
        self.done = True
        self.finish(0.0, success=False)
        return f"The number was {self.secret}."

    def on_answer(self, text: str) -> str | None:
        """A reply without a tool call: a reminder while ``reminders`` last (a model that has not yet
        learned the tool format keeps playing, and learns from the turns that follow), then the end."""
        if self.reminders_left > 0:
            self.reminders_left -= 1
            return "Call the guess tool with a number."
        self.done = True
        self.finish(0.0, success=False)
        return f"The number was {self.secret}."

    def expert_action(self) -> str | None:
        """Binary search: guess the middle of the range the hints leave open."""
        if self.done:
            return None
        return format_tool_call("guess", {"number": (self.low + self.high) // 2})

    def state_digest(self) -> str:
        """What a good summary keeps: the open range and the number of guesses."""
        return f"The number is from {self.low} to {self.high}. Guesses so far: {self.guesses}."


def register_envs() -> None:
    """Register this package's environments; a ``agentrl.envs`` entry point names this function."""
    register(GuessNumber.name, GuessNumber, description=GuessNumber.description)


def play_expert(env: ToolEnv, seed: int, max_turns: int = 100) -> tuple[float, int, bool]:
    """Play the expert on ``seed``; return the episode's total reward, its turns and its success."""
    env.reset(seed=seed)
    total, turns, success = 0.0, 0, False
    while turns < max_turns and (action := env.expert_action()) is not None:
        result = env.step(action)
        total, turns = total + result.reward, turns + 1
        if result.terminated or result.truncated:
            success = bool(result.info.get("success"))
            break
    return total, turns, success


def main() -> None:
    """Check the environment, register it, make it by name and let the expert play five seeds."""
    check_env(GuessNumber(max_number=100))
    print("check_env: ok")
    if GuessNumber.name not in dict(list_envs()):
        register_envs()
    env = make("guess_number", max_number=1000)
    for seed in range(5):
        total, turns, success = play_expert(env, seed)
        print(f"seed {seed}: secret {env.secret}, success {success} in {turns} guesses, reward {total:.2f}")


if __name__ == "__main__":
    main()
