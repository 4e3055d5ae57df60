"""arithmetic: evaluate a short integer expression and answer directly, in one turn and without tools.

The home ground of GRPO: short, single-turn and verifiable from the outcome alone. It is also the
smallest task the training loop can learn from on a CPU.

Task: an expression of ``num_operands`` integers from 0 to ``max_value`` joined by operators drawn from
``operators`` (a string, a non-empty subset of ``+-*``), e.g. ``Compute 37 + 48 * 2.``. The usual
precedence holds (``*`` before ``+`` and ``-``, left to right otherwise); there are no parentheses and
no division, so the result is always an exact integer (possibly negative). Text is kept short on
purpose: the tiny default model's tokenizer is trained on it.

Answer extraction (``last_integer``): the reply's last number counts. A number is an optional minus
sign (``-`` or ``−``, taken as a sign only when no letter or digit stands right before it, so ``5-2``
reads as 5 and 2) followed by digits, with optional thousands commas (``1,234``) and an optional
decimal part. A number with a non-zero decimal part (``3.5``) is not an integer, so the reply is wrong;
``32.0`` counts as 32. Reward 1 and success if the extracted integer equals the result, else 0.

The environment has no tools, so every reply is a final answer and the episode has one turn. (A reply
that writes a tool-call block gets the base class's error observation, since no tool exists, and the
episode goes on; the runner's turn cap decides whether there is a second turn.) The expert answers with
the number alone. ``state_digest`` is None: there is nothing to compact.
"""

import random
import re
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from agentrl.env import ToolEnv

OPERATORS = "+-*"
KNOB_NAMES = ("num_operands", "max_value", "operators")
MAX_OPERANDS = 10
MAX_VALUE = 10**6

# sign only when not glued to a word or number; thousands groups; optional decimal part
_NUMBER = re.compile(r"(?<![\w.])([-\u2212]?)(\d{1,3}(?:,\d{3})+|\d+)(?:\.(\d+))?")


def last_integer(text: str) -> int | None:
    """The last number in ``text`` as an int, or None if there is none or it has a non-zero decimal
    part. See the module docstring for what counts as a number."""
    matches = list(_NUMBER.finditer(text))
    if not matches:
        return None
    sign, digits, decimals = matches[-1].groups()
    value = Decimal(digits.replace(",", "") + ("." + decimals if decimals else ""))
    if value != value.to_integral_value():
        return None
    return -int(value) if sign else int(value)


@dataclass(frozen=True)
class Knobs:
    """The difficulty of one episode, validated.

    Attributes:
        num_operands: integers in the expression; 2 to 10.
        max_value: largest operand; operands are drawn uniformly from 0 to ``max_value``; 1 to 10**6.
        operators: the operators to draw from, a non-empty string of distinct characters from ``+-*``.
    """

    num_operands: int
    max_value: int
    operators: str


def make_knobs(**options: Any) -> Knobs:
    """Validate ``options`` (any of ``KNOB_NAMES``; missing ones take defaults); ValueError names the bad
    option."""
    unknown = sorted(set(options) - set(KNOB_NAMES))
    if unknown:
        raise ValueError(f"{unknown[0]}: unknown arithmetic option; known: {', '.join(KNOB_NAMES)}")
    n = options.get("num_operands", 3)
    m = options.get("max_value", 99)
    ops = options.get("operators", OPERATORS)
    if not isinstance(n, int) or isinstance(n, bool) or not 2 <= n <= MAX_OPERANDS:
        raise ValueError(f"num_operands: expected an int from 2 to {MAX_OPERANDS}, got {n!r}")
    if not isinstance(m, int) or isinstance(m, bool) or not 1 <= m <= MAX_VALUE:
        raise ValueError(f"max_value: expected an int from 1 to {MAX_VALUE}, got {m!r}")
    if not isinstance(ops, str) or not ops or set(ops) - set(OPERATORS) or len(set(ops)) != len(ops):
        raise ValueError(f"operators: expected distinct characters from {OPERATORS!r}, got {ops!r}")
    return Knobs(n, m, ops)


def evaluate(operands: list[int], operators: list[str]) -> int:
    """Exact value of ``operands[0] op[0] operands[1] ...`` with ``*`` binding tighter than ``+``/``-``.

    Written out rather than handed to ``eval`` so the grading rule is plain to read.
    """
    if len(operators) != len(operands) - 1:
        raise ValueError("operators: expected one fewer operator than operands")
    terms, signs = [operands[0]], [1]
    for op, value in zip(operators, operands[1:], strict=True):
        if op == "*":
            terms[-1] *= value
        elif op in "+-":
            terms.append(value)
            signs.append(1 if op == "+" else -1)
        else:
            raise ValueError(f"operators: unknown operator {op!r}")
    return sum(s * t for s, t in zip(signs, terms, strict=True))


class Arithmetic(ToolEnv):
    """Compute a short integer expression and answer with the number; see the module docstring."""

    name = "arithmetic"
    description = "Single-turn integer arithmetic answered directly, no tools (the GRPO home ground)."
    system_prompt = "Compute the expression. Reply with the integer result only."

    def __init__(self, **knobs: Any) -> None:
        super().__init__()
        self._options = dict(knobs)
        self.knobs = make_knobs(**self._options)

    def setup(self, rng: random.Random, options: dict) -> str:
        """Draw a fresh expression; ``options`` may override any constructor knob for this episode."""
        k = self.knobs = make_knobs(**{**self._options, **(options or {})})
        operands = [rng.randint(0, k.max_value) for _ in range(k.num_operands)]
        operators = [rng.choice(k.operators) for _ in range(k.num_operands - 1)]
        pairs = zip(operators, operands[1:], strict=True)
        self.expression = " ".join([str(operands[0])] + [f"{o} {v}" for o, v in pairs])
        self.result = evaluate(operands, operators)
        self._done = False
        return f"Compute {self.expression}."

    def on_answer(self, text: str) -> None:
        """Grade the reply: its last integer against the exact result (reward 1/0)."""
        correct = last_integer(text) == self.result
        self._done = True
        self.finish(1.0 if correct else 0.0, success=correct)

    def expert_action(self) -> str | None:
        """The exact result, alone."""
        return None if self._done else str(self.result)

    def state_digest(self) -> str | None:
        """None: a single-turn task has nothing to compact."""
        return None
