"""The functions ``code_fix`` builds its projects from: a correct source, a planted bug, test inputs.

Each ``Spec`` is a small, well-known function with a docstring that states what it must do (the
spec a programmer fixes it against), its correct source, one buggy variant (a single plausible slip:
an off-by-one, a wrong operator, a missing case) and a generator of test inputs. Expected outputs are
never written by hand: the environment runs the correct source on the host to compute them.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Spec:
    """One function of the catalogue.

    Attributes:
        name: the function's name (unique in the catalogue).
        source: its correct source, a ``def`` block with a docstring.
        buggy: the same block with one planted bug (same signature and docstring).
        inputs: draws one argument tuple from an rng.
    """

    name: str
    source: str
    buggy: str
    inputs: Callable[[random.Random], tuple[Any, ...]]

    def missing(self) -> str:
        """The block with its body replaced by ``raise NotImplementedError`` (a function to write)."""
        head = self.source.splitlines()[:2]  # the def line and its one-line docstring
        return "\n".join([*head, '    raise NotImplementedError("write this function")'])


def _ints(rng: random.Random, lo: int = -20, hi: int = 20, n: tuple[int, int] = (1, 7)) -> list[int]:
    return [rng.randint(lo, hi) for _ in range(rng.randint(*n))]


_WORDS = ("apple", "level", "noon", "data", "Radar", "tree", "stats", "Anna", "zebra", "kayak", "moon")


def _text(rng: random.Random) -> str:
    return " ".join(rng.choice(_WORDS) for _ in range(rng.randint(1, 5)))


def _spec(name: str, source: str, bug: tuple[str, str], inputs: Callable[[random.Random], tuple]) -> Spec:
    old, new = bug
    if source.count(old) != 1:
        raise ValueError(f"{name}: the bug's text must occur once in the source")
    return Spec(name, source.strip("\n"), source.replace(old, new).strip("\n"), inputs)


CATALOGUE: tuple[Spec, ...] = (
    _spec("clamp", '''
def clamp(x, lo, hi):
    """Return x limited to the range from lo to hi (lo <= hi)."""
    return max(lo, min(x, hi))
''', ("min(x, hi)", "min(x, lo)"), lambda r: (r.randint(-30, 30), r.randint(-10, 0), r.randint(1, 10))),
    _spec("mean", '''
def mean(xs):
    """Return the arithmetic mean of the non-empty list xs."""
    return sum(xs) / len(xs)
''', ("len(xs)", "(len(xs) + 1)"), lambda r: (_ints(r),)),
    _spec("count_vowels", '''
def count_vowels(s):
    """Return how many characters of s are vowels (a, e, i, o, u), in either case."""
    return sum(1 for c in s.lower() if c in "aeiou")
''', ('"aeiou"', '"aeio"'), lambda r: (_text(r) + " " + r.choice(("you", "umbrella", "tune")),)),
    _spec("is_palindrome", '''
def is_palindrome(s):
    """Return True if s reads the same both ways, ignoring case and anything not a letter or digit."""
    t = [c.lower() for c in s if c.isalnum()]
    return t == t[::-1]
''', ("c.lower() for", "c for"), lambda r: (r.choice(_WORDS) if r.random() < 0.7 else _text(r),)),
    _spec("running_total", '''
def running_total(xs):
    """Return the list of prefix sums of xs: element i is xs[0] + ... + xs[i]."""
    out, total = [], 0
    for x in xs:
        total += x
        out.append(total)
    return out
''', ("        total += x\n        out.append(total)", "        out.append(total)\n        total += x"),
        lambda r: (_ints(r),)),
    _spec("dedupe", '''
def dedupe(xs):
    """Return xs without repeated elements, keeping the first occurrence of each, in order."""
    seen, out = set(), []
    for x in xs:
        if x not in seen:
            seen.add(x)
            out.append(x)
    return out
''', ("    return out", "    return sorted(out)"), lambda r: (_ints(r, 0, 6, (3, 9)),)),
    _spec("gcd", '''
def gcd(a, b):
    """Return the greatest common divisor of the non-negative integers a and b (gcd(0, 0) is 0)."""
    while b:
        a, b = b, a % b
    return a
''', ("    return a", "    return b"), lambda r: (r.randint(1, 60) * r.randint(1, 6), r.randint(1, 60))),
    _spec("factorial", '''
def factorial(n):
    """Return n! for an integer n >= 0."""
    result = 1
    for k in range(2, n + 1):
        result *= k
    return result
''', ("range(2, n + 1)", "range(2, n)"), lambda r: (r.randint(2, 12),)),
    _spec("argmax", '''
def argmax(xs):
    """Return the index of the largest element of the non-empty list xs (the first, on ties)."""
    best = 0
    for i in range(1, len(xs)):
        if xs[i] > xs[best]:
            best = i
    return best
''', ("xs[i] > xs[best]", "xs[i] >= xs[best]"), lambda r: (_ints(r, 0, 4, (3, 8)),)),
    _spec("chunk", '''
def chunk(xs, n):
    """Split xs into consecutive pieces of n elements (the last one may be shorter)."""
    return [xs[i:i + n] for i in range(0, len(xs), n)]
''', ("xs[i:i + n]", "xs[i:i + n - 1]"), lambda r: (_ints(r, 0, 9, (2, 9)), r.randint(2, 4))),
    _spec("to_fahrenheit", '''
def to_fahrenheit(celsius):
    """Convert a temperature from degrees Celsius to degrees Fahrenheit."""
    return celsius * 9 / 5 + 32
''', ("celsius * 9 / 5", "celsius * 5 / 9"), lambda r: (r.randint(-40, 100),)),
    _spec("reverse_words", '''
def reverse_words(s):
    """Return the words of s (split on whitespace) in reverse order, joined by single spaces."""
    return " ".join(reversed(s.split()))
''', ('" ".join', '"".join'), lambda r: (_text(r) + " " + r.choice(_WORDS),)),
    _spec("word_count", '''
def word_count(text):
    """Return a dict from each lower-cased word of text (split on whitespace) to how often it occurs."""
    counts = {}
    for word in text.lower().split():
        counts[word] = counts.get(word, 0) + 1
    return counts
''', ("text.lower().split()", "text.split()"), lambda r: (_text(r) + " " + r.choice(("Anna", "Radar")),)),
    _spec("second_largest", '''
def second_largest(xs):
    """Return the second largest distinct value of xs, which holds at least two distinct values."""
    return sorted(set(xs))[-2]
''', ("sorted(set(xs))", "sorted(xs)"), lambda r: (_ints(r, 0, 5, (4, 8)) + [9, 9],)),
    _spec("digit_sum", '''
def digit_sum(n):
    """Return the sum of the decimal digits of the integer n (its sign is ignored)."""
    return sum(int(d) for d in str(abs(n)))
''', ("str(abs(n))", "str(n).lstrip('-')[1:]"), lambda r: (r.randint(-9999, 9999),)),
    _spec("flatten", '''
def flatten(rows):
    """Return the elements of a list of lists, row after row, in one list."""
    return [x for row in rows for x in row]
''', ("[x for row in rows for x in row]", "[row[0] for row in rows if row]"),
        lambda r: ([_ints(r, 0, 9, (0, 4)) for _ in range(r.randint(2, 4))] + [[1, 2]],)),
)

BY_NAME = {spec.name: spec for spec in CATALOGUE}


def compile_function(source: str, name: str) -> Callable[..., Any]:
    """The function ``name`` defined by ``source`` (trusted catalogue text only, run on the host)."""
    namespace: dict[str, Any] = {}
    exec(compile(source, f"<catalogue {name}>", "exec"), namespace)  # noqa: S102 - our own source
    return namespace[name]
