"""ledger: answer a question about a hidden table of records that can only be read one record at a time.

A long-horizon task whose difficulty is memory, not search: the answer needs every record, and with
``num_records`` up to 200 and verbose records the conversation outgrows a small context window, so the
agent's running position and running value must survive compaction.

Hidden state (drawn in ``setup`` from the seeded ``random.Random`` only, so a seed fixes the episode):
``num_records`` records, each with a vendor, a category, an integer amount from 1 to 999 and a date in
2024, plus the padding text the chosen ``verbosity`` shows around them. The question names one category
that occurs in the table and asks, by ``question``:

- ``sum``: the total amount of the records of that category (the default);
- ``count``: how many records have that category;
- ``max``: the largest amount among the records of that category;
- ``mixed``: one of the three above, drawn per episode.

Tools: ``read(index)`` returns record ``index`` (0-based); an index outside the table raises ValueError,
which comes back as a readable tool error and the episode goes on. ``submit(answer)`` ends the episode:
reward 1 and success if ``answer`` is the exact answer, else reward 0. There is one submission.

A turn without a tool call is taken as a submission of the last integer in its text (see
``envs.arithmetic.last_integer``); a turn with no integer ends the episode with reward 0. Either way a
final answer is graded exactly like ``submit``, so a model that answers in prose is not punished for
the format alone.

The expert reads the lowest unread record each turn (so 0, 1, ..., N-1 when it starts from the
beginning), then submits the exact answer: N + 1 turns. ``state_digest`` keeps what a good summary
keeps: which records were read, the next one to read and the running value over those read.
"""

import random
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

from agentrl.env import ToolEnv
from agentrl.tools import format_tool_call, tool

from .arithmetic import last_integer

VERBOSITIES = ("terse", "normal", "verbose")
QUESTIONS = ("sum", "count", "max")
KNOB_NAMES = ("num_records", "verbosity", "question")
MIN_RECORDS, MAX_RECORDS = 5, 200

_CATEGORIES = ("travel", "meals", "office", "software", "hardware", "training")
_VENDORS = (
    "Northwind", "Bluebird Air", "Copper Kettle", "Papermill", "Stackworks", "Greenline Rail",
    "Harbor Hotel", "Quillsoft", "Ironclad Supply", "Brightpath Learning", "Cedar Cafe", "Voltage Depot",
)
_PEOPLE = ("A. Moreau", "B. Okafor", "C. Lindqvist", "D. Tanaka", "E. Novak", "F. Almeida", "G. Haddad")
_MEMOS = (
    "quarterly team offsite", "client visit", "replacement equipment", "annual licence renewal",
    "conference registration", "working lunch", "stationery restock", "on-site workshop",
)
# verbose padding: boilerplate with numbers that are not amounts, so reading the right field matters
_AUDIT = (
    "Entered by {p} and checked against statement {n}.",
    "The receipt was scanned on page {k} of batch {n}.",
    "Policy note: items above the team limit need a second signature; this one was signed by {p}.",
    "Tax was recorded separately under code {n} and is not part of the amount.",
    "Reconciled in cycle {k}; no discrepancy was found.",
    "Cost centre {n} carries this entry until the end of the year.",
    "A copy of the invoice is archived in cabinet {k}, drawer {j}.",
    "The payment was released by {p} after the usual review.",
    "Exchange-rate adjustments, if any, are booked in a separate journal.",
    "Attachments: {k} file(s). Status: closed.",
)


@dataclass(frozen=True)
class Knobs:
    """The options of one episode, validated.

    Attributes:
        num_records: records in the table; 5 to 200.
        verbosity: ``terse`` (one line per record), ``normal`` (plus a memo line) or ``verbose`` (plus
            an audit paragraph, about 400 more characters per record).
        question: ``sum``, ``count``, ``max`` or ``mixed`` (one of the three per episode).
    """

    num_records: int
    verbosity: str
    question: str


def make_knobs(**options: Any) -> Knobs:
    """Validate ``options`` (any of ``KNOB_NAMES``; missing ones take defaults); ValueError names the bad
    option."""
    unknown = sorted(set(options) - set(KNOB_NAMES))
    if unknown:
        raise ValueError(f"{unknown[0]}: unknown ledger option; known: {', '.join(KNOB_NAMES)}")
    n = options.get("num_records", 20)
    verbosity = options.get("verbosity", "normal")
    question = options.get("question", "sum")
    if not isinstance(n, int) or isinstance(n, bool) or not MIN_RECORDS <= n <= MAX_RECORDS:
        raise ValueError(f"num_records: expected an int from {MIN_RECORDS} to {MAX_RECORDS}, got {n!r}")
    if verbosity not in VERBOSITIES:
        raise ValueError(f"verbosity: expected one of {VERBOSITIES}, got {verbosity!r}")
    if question not in (*QUESTIONS, "mixed"):
        raise ValueError(f"question: expected one of {(*QUESTIONS, 'mixed')}, got {question!r}")
    return Knobs(n, verbosity, question)


@dataclass(frozen=True)
class Record:
    """One row of the hidden table, with the padding text drawn for it."""

    index: int
    vendor: str
    category: str
    amount: int
    day: date
    memo: str
    audit: tuple[str, ...]


def draw_record(index: int, rng: random.Random) -> Record:
    """Draw record ``index`` from ``rng``; the padding is drawn even when not shown, so the table does
    not depend on ``verbosity``."""
    vendor, category = rng.choice(_VENDORS), rng.choice(_CATEGORIES)
    amount = rng.randint(1, 999)
    day = date(2024, 1, 1) + timedelta(days=rng.randrange(366))
    memo = (
        f"{rng.choice(_MEMOS)}. Reference INV-{rng.randrange(10000, 100000)}, "
        f"approved by {rng.choice(_PEOPLE)}"
    )
    audit = tuple(
        line.format(
            p=rng.choice(_PEOPLE), n=rng.randrange(1000, 10000), k=rng.randint(1, 40), j=rng.randint(1, 6)
        )
        for line in rng.sample(_AUDIT, 4)
    )
    return Record(index, vendor, category, amount, day, memo, audit)


def render_record(record: Record, verbosity: str) -> str:
    """The text ``read`` returns for ``record`` at ``verbosity``."""
    r = record
    line = f"Record {r.index}: vendor={r.vendor}, category={r.category}, amount={r.amount}, date={r.day}"
    if verbosity == "terse":
        return line
    text = f"{line}\nMemo: {r.memo}."
    if verbosity == "verbose":
        text += "\nAudit: " + " ".join(r.audit)
    return text


def answer_for(question: str, category: str, records: list[Record]) -> int:
    """The exact answer to ``question`` about ``category`` over ``records`` (0 when none match)."""
    amounts = [r.amount for r in records if r.category == category]
    if question == "sum":
        return sum(amounts)
    if question == "count":
        return len(amounts)
    return max(amounts, default=0)


def index_ranges(indices: set[int]) -> str:
    """``{0, 1, 2, 5, 7, 8}`` -> ``"0-2, 5, 7-8"``; ``"none"`` when empty."""
    runs: list[list[int]] = []
    for i in sorted(indices):
        if runs and i == runs[-1][1] + 1:
            runs[-1][1] = i
        else:
            runs.append([i, i])
    return ", ".join(f"{a}-{b}" if a != b else str(a) for a, b in runs) or "none"


_QUESTION_TEXT = {
    "sum": "What is the total amount of all records with category {c}?",
    "count": "How many records have category {c}?",
    "max": "What is the largest amount among the records with category {c}?",
}
_RUNNING = {"sum": "running total", "count": "running count", "max": "largest amount so far"}


class Ledger(ToolEnv):
    """Read every record of a hidden table and submit an aggregate over it; see the module docstring."""

    name = "ledger"
    description = "Hidden table read one record at a time; the answer needs every record (5 to 200 records)."
    system_prompt = (
        "You answer a question about a hidden ledger using tools. Read records with read, one record per "
        "call, and give the answer with submit. You can submit only once."
    )

    def __init__(self, **knobs: Any) -> None:
        super().__init__()
        self._options = dict(knobs)
        self.knobs = make_knobs(**self._options)

    def setup(self, rng: random.Random, options: dict) -> str:
        """Draw a fresh table and question; ``options`` may override any constructor knob for this
        episode."""
        self.knobs = make_knobs(**{**self._options, **(options or {})})
        self.records = [draw_record(i, rng) for i in range(self.knobs.num_records)]
        self.question = self.knobs.question
        if self.question == "mixed":
            self.question = rng.choice(QUESTIONS)
        self.category = rng.choice(sorted({r.category for r in self.records}))
        self.answer = answer_for(self.question, self.category, self.records)
        self._read: set[int] = set()
        self._next = 0  # lowest unread index
        self._done = False
        n = self.knobs.num_records
        return (
            f"The ledger has {n} records, numbered 0 to {n - 1}. "
            + _QUESTION_TEXT[self.question].format(c=self.category)
            + " Submit one integer."
        )

    @tool(timeout_s=None)  # in-memory and cannot hang: run inline, without the worker-thread handoff
    def read(self, index: int) -> str:
        """Read one record of the ledger.

        Args:
            index: the record's number, from 0 to the number of records minus 1.
        """
        n = len(self.records)
        if not 0 <= index < n:
            raise ValueError(f"index: the ledger has records 0 to {n - 1}, got {index}")
        self._read.add(index)
        while self._next in self._read:
            self._next += 1
        return render_record(self.records[index], self.knobs.verbosity)

    @tool(timeout_s=None)
    def submit(self, answer: int) -> str:
        """Submit the answer to the question. This ends the episode.

        Args:
            answer: the answer, one integer.
        """
        return self._grade(answer)

    def _grade(self, answer: int | None) -> str:
        correct = answer == self.answer
        self._done = True
        self.finish(1.0 if correct else 0.0, success=correct)
        if correct:
            return f"Correct: {answer}."
        # a prose reply can hold a number too long for str() (CPython's 4300-digit limit): never print one
        shown = "no integer" if answer is None else str(answer) if abs(answer) < 10**100 else "that number"
        return f"Incorrect: {shown} is not the answer."

    def on_answer(self, text: str) -> None:
        """A reply without a tool call submits the last integer it contains (none: reward 0)."""
        self._grade(last_integer(text))

    def expert_action(self) -> str | None:
        """Read the lowest unread record; once all are read, submit the exact answer."""
        if self._done:
            return None
        if self._next < len(self.records):
            return format_tool_call("read", {"index": self._next})
        return format_tool_call("submit", {"answer": self.answer})

    def state_digest(self) -> str:
        """Which records were read, the next one to read and the running value over those read."""
        n = len(self.records)
        running = answer_for(self.question, self.category, [self.records[i] for i in sorted(self._read)])
        nxt = f"next to read: {self._next}" if self._next < n else "all records read"
        return (
            f"Records read ({len(self._read)} of {n}): {index_ranges(self._read)}; {nxt}.\n"
            f"Category {self.category}, {_RUNNING[self.question]} over the records read: {running}."
        )
