"""gym: Gymnasium's toy-text games (FrozenLake, Taxi, CliffWalking) played through tools, on a text board.

``GymTextEnv(game, **game_kwargs)`` wraps ``gymnasium.make(game, **game_kwargs)``. Gymnasium is an
optional dependency (``pip install 'gymnasium>=1.0'``, or the ``gym`` extra of a clone); it is imported
when a ``GymTextEnv`` is built, so ``import envs`` works without it. The game ids are Gymnasium's own:
with gymnasium 1.4 they are ``FrozenLake-v1``, ``FrozenLake8x8-v1``, ``Taxi-v4`` (``Taxi-v3`` in
gymnasium 1.0 to 1.2) and ``CliffWalking-v1``; any id of those three families that the installed
gymnasium registers is accepted.

Tools: ``move(direction)`` with ``direction`` one of up, down, left, right (Taxi's north, south, east
and west); Taxi also has ``pickup()`` and ``dropoff()``. A Taxi env is an instance of a private
subclass that adds those two tools, since a ``ToolEnv``'s tools are its class's ``@tool`` methods.

Observations: every tool result says what happened, the game's own reward for the move and its running
total, then the board, drawn by this module from the game's state rather than by the game's ``ansi``
renderer (which colours the agent with terminal escape codes). ``@`` marks the agent (the taxi):

- FrozenLake: ``S`` start, ``F`` frozen (safe), ``H`` hole, ``G`` goal.
- CliffWalking: ``.`` ground, ``C`` cliff, ``S`` start, ``G`` goal; walking into the cliff sends the
  agent back to the start (the game's reward -100), as in Gymnasium.
- Taxi: Gymnasium's map (``|`` walls, ``R G Y B`` the four stands) plus a line naming where the
  passenger is and where they want to go.

Episode end: reaching the goal (FrozenLake, CliffWalking) or dropping the passenger at the destination
(Taxi) ends the episode with reward 1 and success; falling into a hole, or the game's own step limit
(Gymnasium's ``TimeLimit``: 100 moves for FrozenLake 4x4, 200 for 8x8 and Taxi, none for CliffWalking),
ends it with reward 0; the step limit is reported as ``truncated`` (a cap, not a true end), the rest as
``terminated``. The game's rewards are reported in the observations and in ``game_return``, not
added to the episode reward, so every game has the same 0/1 success reward.

Determinism and the expert: ``is_slippery`` defaults to False for FrozenLake (Gymnasium's default is
True), so the moves are deterministic and the expert is exact. The expert acts greedily on a value
iteration over the game's transition table ``P`` (discount 0.95, reward 1 for a successful terminal
transition, 0 for any other terminal one): on deterministic games that is a shortest path that avoids
holes and the cliff; on stochastic ones (slippery ice, rainy or fickle Taxi) it maximises a discounted
success chance and solves only part of the seeds. With ``random_map_size=n`` every seed draws its own
FrozenLake map of side ``n`` (Gymnasium's ``generate_random_map``, 80% frozen, always solvable);
otherwise the map is the game's fixed one and only the start state (Taxi) varies with the seed.

A reply without a tool call ends the episode with reward 0; with ``nudge`` (``True`` for the default
text, or a text of your own) it is answered with that text and the episode goes on. Every other
Gymnasium game with a discrete action space goes through ``envs.gym_discrete``.
"""

import random
from collections.abc import Callable
from typing import Any, Literal

from agentrl.env import ToolEnv
from agentrl.tools import format_tool_call, tool

FAMILIES = ("FrozenLake", "Taxi", "CliffWalking")
# Gymnasium's action index -> this adapter's action name, per game family
ACTIONS = {
    "FrozenLake": ("left", "down", "right", "up"),
    "CliffWalking": ("up", "right", "down", "left"),
    "Taxi": ("down", "up", "right", "left", "pickup", "dropoff"),
}
GAMMA = 0.95
DEFAULT_NUDGE = "Reply with a tool call, such as move(direction=...), to make your move."
MAX_MAP_SIZE = 32  # generate_random_map retries until a map is solvable; larger sides take very long
Direction = Literal["up", "down", "left", "right"]

_LEGEND = {
    "FrozenLake": "@ you, S start, F frozen ice (safe), H hole, G goal. Reach G without falling into a hole.",
    "CliffWalking": "@ you, . ground, C cliff, S start, G goal. Reach G; stepping on C sends you back to S.",
    "Taxi": (
        "@ the taxi, | a wall, R G Y B the four stands. Drive to the passenger, pick them up, drive to "
        "their destination and drop them off."
    ),
}


def _import_gymnasium() -> Any:
    try:
        import gymnasium
    except ImportError as err:  # the extra is optional: say how to get it
        raise ImportError("the gym environment needs gymnasium: pip install 'gymnasium>=1.0' (in a clone of "
                          "agentrl: pip install -e '.[gym]')") from err
    return gymnasium


def game_family(game: str) -> str:
    """``"FrozenLake8x8-v1"`` -> ``"FrozenLake"``; ValueError for a game outside the three families."""
    for family in FAMILIES:
        if isinstance(game, str) and game.startswith(family):
            return family
    raise ValueError(f"game: expected a FrozenLake, Taxi or CliffWalking id, got {game!r}")


def greedy_values(P: dict, success: Callable[[int, bool], bool], gamma: float = GAMMA) -> list[float]:
    """Optimal values of a tabular game by in-place value iteration, for the reward "1 on a successful
    terminal transition, 0 otherwise" (Sutton & Barto, 2018, section 4.4).

    Args:
        P: Gymnasium's transition table, ``P[state][action] = [(prob, next_state, reward, terminated)]``.
        success: whether a transition into ``next_state`` with this ``terminated`` flag is a success.
        gamma: discount; below 1 so that shorter routes to success are worth more.
    """
    values = [0.0] * len(P)
    for _ in range(10_000):
        delta = 0.0
        for s in range(len(P)):
            best = max(action_value(P, values, s, a, success, gamma) for a in P[s])
            delta, values[s] = max(delta, abs(best - values[s])), best
        if delta < 1e-12:
            break
    return values


def action_value(
    P: dict, values: list[float], state: int, action: int, success: Callable[[int, bool], bool], gamma: float
) -> float:
    """Expected value of taking ``action`` in ``state`` under ``values`` (see ``greedy_values``)."""
    total = 0.0
    for prob, nxt, _, terminated in P[state][action]:
        if terminated:
            total += prob * float(success(int(nxt), bool(terminated)))
        else:
            total += prob * gamma * values[int(nxt)]
    return total


class GymTextEnv(ToolEnv):
    """A Gymnasium toy-text game played with a ``move`` tool on a text board; see the module docstring."""

    name = "gym"
    description = "Gymnasium toy-text games (FrozenLake, Taxi, CliffWalking) on a text board, via tools."
    system_prompt = "You play a grid game with tools."

    def __new__(cls, game: str = "FrozenLake-v1", **kwargs: Any) -> "GymTextEnv":
        # Taxi has two more tools; tools are class-level, so Taxi gets its own subclass
        if cls is GymTextEnv and isinstance(game, str) and game.startswith("Taxi"):
            cls = _TaxiTextEnv
        return super().__new__(cls)

    def __init__(
        self, game: str = "FrozenLake-v1", *, random_map_size: int | None = None, nudge: bool | str = False,
        **game_kwargs: Any,
    ) -> None:
        super().__init__()
        self.nudge = DEFAULT_NUDGE if nudge is True else (nudge or None)
        if not isinstance(self.nudge, str | None):
            raise ValueError(f"nudge: expected true, false or a text, got {nudge!r}")
        self._gym = _import_gymnasium()
        self.family = game_family(game)
        known = sorted(k for k in self._gym.registry if k.startswith(FAMILIES))
        if game not in known:
            raise ValueError(f"game: {game!r} is not registered in gymnasium; known: {', '.join(known)}")
        if random_map_size is not None:
            if self.family != "FrozenLake" or {"desc", "map_name"} & set(game_kwargs):
                raise ValueError("random_map_size: only for FrozenLake, without desc or map_name")
            size = random_map_size
            if not isinstance(size, int) or isinstance(size, bool) or not 2 <= size <= MAX_MAP_SIZE:
                raise ValueError(f"random_map_size: expected an int from 2 to {MAX_MAP_SIZE}, got {size!r}")
        if self.family == "FrozenLake":
            game_kwargs.setdefault("is_slippery", False)
        self.game, self.random_map_size, self.game_kwargs = game, random_map_size, game_kwargs
        self.system_prompt = f"You play {game} on a text board, using tools. " + _LEGEND[self.family]
        self._values: dict[tuple, list[float]] = {}  # value tables per map, computed on first need
        try:  # built now so a bad game_kwargs fails at construction, as a ValueError naming it
            self._game = self._make(None)
        except (TypeError, KeyError, ValueError) as err:
            raise ValueError(f"game_kwargs: {game} rejected {game_kwargs!r}: {err}") from err

    def _make(self, desc: list[str] | None) -> Any:
        kwargs = dict(self.game_kwargs, **({"desc": desc} if desc is not None else {}))
        return self._gym.make(self.game, disable_env_checker=True, **kwargs)

    def setup(self, rng: random.Random, options: dict) -> str:
        """Start a new game, seeded from ``rng``; per-episode ``options`` are not supported (use the
        constructor)."""
        if options:
            raise ValueError(f"options: gym takes its options in the constructor, got {sorted(options)}")
        seed = rng.randrange(2**31)
        if self.random_map_size is not None:
            from gymnasium.envs.toy_text.frozen_lake import generate_random_map

            self._game = self._make(generate_random_map(self.random_map_size, seed=rng.randrange(2**31)))
            self._values.clear()  # one table per map: keeping every episode's map's table would grow forever
        self._state, _ = self._game.reset(seed=seed)
        self._moves, self._game_return, self._done = 0, 0.0, False
        return f"Play {self.game}. " + _LEGEND[self.family] + "\n" + self.board()

    # ---- the board -----------------------------------------------------------------------------------

    @property
    def _raw(self) -> Any:
        return self._game.unwrapped

    def _desc_rows(self) -> list[str]:
        return ["".join(c.decode() for c in row) for row in self._raw.desc]

    def board(self) -> str:
        """The current board as text (see the module docstring for the symbols)."""
        if self.family == "FrozenLake":
            rows = [list(row) for row in self._desc_rows()]
            r, c = divmod(int(self._state), len(rows[0]))
            rows[r][c] = "@"
            return "\n".join("".join(row) for row in rows)
        if self.family == "CliffWalking":
            nrow, ncol = self._raw.shape
            rows = [["."] * ncol for _ in range(nrow)]
            rows[-1] = ["S"] + ["C"] * (ncol - 2) + ["G"]  # Gymnasium's layout: the cliff lies between
            r, c = divmod(int(self._state), ncol)
            rows[r][c] = "@"
            return "\n".join("".join(row) for row in rows)
        taxi_row, taxi_col, passenger, destination = self._raw.decode(int(self._state))
        rows = [list(row) for row in self._desc_rows()]
        rows[1 + taxi_row][1 + 2 * taxi_col] = "@"
        stands = "RGYB"
        where = "in the taxi" if passenger == 4 else f"waiting at {stands[passenger]}"
        lines = ["".join(row) for row in rows]
        return "\n".join(lines + [f"Passenger: {where}. Destination: {stands[destination]}."])

    # ---- playing -------------------------------------------------------------------------------------

    def _is_success(self, state: int, terminated: bool) -> bool:
        if self.family == "FrozenLake":  # a hole also terminates
            r, c = divmod(state, len(self._raw.desc[0]))
            return terminated and self._raw.desc[r][c] == b"G"
        return terminated  # Taxi ends only on a delivery, CliffWalking only at the goal

    def _play(self, action_name: str) -> str:
        action = ACTIONS[self.family].index(action_name)
        before = int(self._state)
        self._state, reward, terminated, truncated, _ = self._game.step(action)
        self._moves += 1
        self._game_return += float(reward)
        outcome = self._outcome(action_name, before, float(reward), bool(terminated))
        if terminated or truncated:
            success = self._is_success(int(self._state), bool(terminated))
            if truncated and not terminated:
                outcome += f" Out of moves: the game stops after {self._moves} moves."
            self._done = True
            cut = bool(truncated) and not terminated  # Gymnasium's TimeLimit, not a true end
            self.finish(1.0 if success else 0.0, success=success, truncated=cut)
        tally = f"Game reward {reward:+g} (total {self._game_return:+g})."
        return f"{outcome} {tally}\n{self.board()}"

    def _outcome(self, action_name: str, before: int, reward: float, terminated: bool) -> str:
        state = int(self._state)
        if terminated:
            if self._is_success(state, terminated):
                return "Delivered: the passenger is at their destination!" if self.family == "Taxi" else (
                    "You reached the goal!"
                )
            return "You fell into a hole. The game is over."
        if self.family == "CliffWalking" and reward <= -100:
            return "You fell off the cliff and are back at the start."
        if action_name in ("pickup", "dropoff"):
            if reward <= -10:
                return f"You cannot {action_name} here."
            return "The passenger gets in." if action_name == "pickup" else "The passenger gets out here."
        if state == before:
            return f"You cannot move {action_name} from here; you stay in place."
        return f"You move {action_name}."

    def on_answer(self, text: str) -> str | None:
        """A reply without a tool call: the nudge, if set (the episode goes on); else the episode ends."""
        if self.nudge is not None:
            return self.nudge
        return super().on_answer(text)

    @tool
    def move(self, direction: Direction) -> str:
        """Move one square on the board.

        Args:
            direction: up, down, left or right (on Taxi's map: north, south, west, east).
        """
        return self._play(direction)

    # ---- expert and digest ---------------------------------------------------------------------------

    def expert_action(self) -> str | None:
        """The action with the best value under value iteration on the game's transition table."""
        if self._done:
            return None
        raw = self._raw
        key = tuple(self._desc_rows()) if self.family == "FrozenLake" else ()
        if key not in self._values:
            self._values[key] = greedy_values(raw.P, self._is_success)
        values, state = self._values[key], int(self._state)
        def value(a: int) -> float:
            return action_value(raw.P, values, state, a, self._is_success, GAMMA)

        best = max(range(len(raw.P[state])), key=value)
        name = ACTIONS[self.family][best]
        if name in ("pickup", "dropoff"):
            return format_tool_call(name, {})
        return format_tool_call("move", {"direction": name})

    def state_digest(self) -> str:
        """Moves made, the game's reward so far and the current board."""
        return f"Moves made: {self._moves}. Game reward so far: {self._game_return:+g}.\n{self.board()}"


class _TaxiTextEnv(GymTextEnv):
    """Taxi: ``move`` plus ``pickup`` and ``dropoff``."""

    @tool
    def pickup(self) -> str:
        """Pick up the passenger; the taxi must stand on the passenger's square."""
        return self._play("pickup")

    @tool
    def dropoff(self) -> str:
        """Drop off the passenger; the passenger must be in the taxi."""
        return self._play("dropoff")
