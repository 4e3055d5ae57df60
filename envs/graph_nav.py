"""graph_nav: find a key in a partly observed maze of rooms and unlock the way out.

A long-horizon search whose length is set by its knobs: from about 10 expert turns (``size="small"``) to
200+ (``size="large"``), with observations verbose enough to overflow a small context window.

Hidden state (built in ``setup`` from the seeded ``random.Random`` only, so a seed fixes the episode):
- Rooms sit on a near-square grid (``networkx.grid_2d_graph``, the first ``num_rooms - 1`` cells in row
  order, which are always connected). Passages are a depth-first-search maze over that grid: a tree with
  long winding corridors, since a uniform random tree is too shallow to reach 200+ turns at a few
  hundred rooms. ``branching`` then opens that fraction of the remaining walls between neighbouring
  cells; those loops are local, so they add choices without collapsing distances.
- One more room, the goal, hangs off a single locked door. The start is random; the key lies in a room
  far from the start, and the locked door in a room far from the key ("far" = at least 80% of the largest
  distance), so the order of early moves decides how long the episode takes. The goal is a leaf, so
  every other room is reachable without passing the lock.
- The lock and the real key share a material ("a brass lock", "brass key"). ``distractors`` useless items
  are scattered: keys of other materials (they do not fit) and junk.
- Room names are adjective-noun pairs ("dusty-attic"), drawn without replacement, hence ``num_rooms`` is at
  most 1000. Observations list exits in sorted order, so text never depends on set or hash order.
- Every room and item name in the text is quoted, exactly as a tool call's JSON argument writes it
  (``Exits: "dusty-attic", "pale-hall".`` and ``{"to": "dusty-attic"}``). With byte-level BPE a word
  after a space and the same word after a quote are different tokens (`` dusty`` against ``d``, ``ust``,
  ``y``), so unquoted names would ask the policy to spell one token sequence as another; quoted, a call's
  argument is a run of tokens the observation showed. (On its own this did not make the tiny model learn
  to copy names in CPU minutes: docs/results.md.)
- With ``numbered``, ``look`` numbers the exits (the open passages by name, then the door to the goal,
  locked or not, so a room's numbers hold for the whole episode) and the items (``Exits: [1]
  "dusty-attic", [2] "pale-hall".``), and ``move``, ``take`` and ``unlock`` take a listed number in place
  of a name (``{"to": "2"}``); a name still works, and the experts write numbers. A choice is then one
  digit to pick rather than a name to copy, which a small model trained from scratch learns far sooner.
- With ``marked``, ``look`` marks each exit to a room the agent has already been in (``[1] "dusty-attic"
  (visited)``), as chalk on the doorframes would. Which way is still unexplored is then on the page, not
  only in the history: while it explores, the explorer walks through the first exit without a mark
  whenever one is left.

What the agent sees: the task text describes the start room; afterwards only ``look`` describes the room
it is in. ``move`` answers with one line, so an exploring agent looks after each move. A bad request
(a room that is not adjacent, an item that is not here) raises ValueError and comes back as a tool error;
a locked door or a key that does not fit is an ordinary observation. Walking into the goal ends the
episode with reward 1 and success. ``step_cost`` is charged per tool call (a turn with several calls pays
for each). The env has no turn cap of its own; the runner's ``max_turns`` is the cap.

The expert is an oracle over the hidden graph (networkx shortest paths): to the key, take it, to the
lock, unlock, into the goal, one tool call per turn. With ``expert_looks`` (the default) it first looks
in every room it enters, as an honest explorer must before it can name an exit; this doubles its turns.
Its route still follows the hidden map, so a policy that sees only its observations cannot copy it
step by step. With ``expert_explores`` the expert is instead an explorer that acts on what the agent
has seen alone: it looks in every room it enters, takes every key it sees, walks (over the passages it
has seen) to the nearest room it has seen but not visited, and once it has seen the locked door and
carries the key of its material, walks there, unlocks it and goes through. Its demonstrations are ones
a partial-information policy can imitate.
"""

import json
import math
import random
from dataclasses import dataclass
from typing import Any

import networkx as nx

from agentrl.env import ToolEnv
from agentrl.tools import format_tool_call, tool

VERBOSITIES = ("terse", "normal", "verbose")
PRESETS: dict[str, dict[str, Any]] = {
    "small": {"num_rooms": 5, "branching": 0.0, "distractors": 1, "verbosity": "normal"},
    "medium": {"num_rooms": 40, "branching": 0.1, "distractors": 6, "verbosity": "normal"},
    "large": {"num_rooms": 300, "branching": 0.03, "distractors": 40, "verbosity": "verbose"},
}
KNOB_NAMES = (
    "size", "num_rooms", "branching", "distractors", "verbosity", "step_cost", "expert_looks",
    "expert_explores", "numbered", "marked",
)
FAR = 0.8  # the key and the lock are drawn among rooms at >= FAR * the largest distance

_ADJECTIVES = (
    "amber ashen azure bleak bright broad chilly crimson damp dim dusty faded gilded gloomy grand hollow "
    "humid ivory jade leaning lofty long low marble misty narrow oaken olive pale quiet round rustic "
    "scarlet silent slate smoky stony sunken tiled velvet"
).split()
_NOUNS = (
    "hall cellar attic study library gallery pantry chapel kitchen parlour corridor vault workshop nursery "
    "armoury ballroom bedroom closet foyer landing larder lounge office scullery tower"
).split()
MAX_ROOMS = len(_ADJECTIVES) * len(_NOUNS)
_MATERIALS = ("brass", "iron", "silver", "copper", "bronze", "steel", "bone", "glass", "wooden", "golden")
_JUNK = (
    "empty bottle", "torn map", "candle stub", "rusty spoon", "cracked mirror", "ball of string",
    "old boot", "broken compass", "bent nail", "dusty book",
)
_FLAVOUR = (
    "Dust hangs in the air and settles slowly on the floor.",
    "A faded tapestry covers most of one wall.",
    "Somewhere above, water drips at a steady pace.",
    "The floorboards creak under every step.",
    "Cobwebs stretch between the beams of the low ceiling.",
    "A cold draught moves through the room.",
    "Old paint peels from the walls in long curls.",
    "A broken lamp lies on its side in a corner.",
    "The windows are boarded up; thin light leaks between the planks.",
    "Faint scratch marks run along the doorframes.",
    "A smell of damp stone fills the room.",
    "Stacks of yellowed newspapers lean against one wall.",
    "A clock on the mantel stopped long ago at a quarter past three.",
    "Moss grows in the cracks between the flagstones.",
    "The ceiling is high and lost in shadow.",
    "Someone has chalked arrows on the floor, pointing nowhere in particular.",
    "A row of empty hooks lines the wall by the door.",
    "The air is warm and still, as if the room has been shut for years.",
    "A rug, worn through in the middle, covers part of the floor.",
    "Shelves line the walls, holding nothing but dust.",
    "The walls are covered in faded wallpaper with a pattern of birds.",
    "An overturned chair blocks part of the room.",
    "Footprints in the dust lead in several directions at once.",
    "A cracked bell hangs from a hook above the door.",
)


@dataclass(frozen=True)
class Knobs:
    """The difficulty knobs of one episode, validated.

    Attributes:
        num_rooms: rooms including the goal; 4 to 1000.
        branching: fraction of the walls between neighbouring rooms that are open beyond the maze's
            tree (0 = exactly one route between two rooms); 0 to 1.
        distractors: useless items (wrong keys and junk) scattered in the rooms.
        verbosity: ``terse``, ``normal`` or ``verbose`` (adds flavour text to every ``look``).
        step_cost: reward subtracted per tool call; >= 0.
        expert_looks: whether the expert looks in each room it enters before acting.
        expert_explores: whether the expert acts on what the agent has seen only (an explorer; it always
            looks), instead of the oracle's shortest paths over the hidden map.
        numbered: whether ``look`` numbers the exits and the items (``[2] "pale-hall"``) and the tools
            take a listed number in place of a name (``{"to": "2"}``); the experts then write numbers.
        marked: whether ``look`` marks the exits to rooms already visited (``"pale-hall" (visited)``).
    """

    num_rooms: int
    branching: float
    distractors: int
    verbosity: str
    step_cost: float
    expert_looks: bool
    expert_explores: bool = False
    numbered: bool = False
    marked: bool = False


def make_knobs(size: str = "medium", **overrides: Any) -> Knobs:
    """Start from preset ``size`` (see ``PRESETS``), apply ``overrides`` (None = keep the preset) and
    validate; ValueError names the offending option."""
    if size not in PRESETS:
        raise ValueError(f"size: expected one of {sorted(PRESETS)}, got {size!r}")
    unknown = sorted(set(overrides) - set(KNOB_NAMES))
    if unknown:
        raise ValueError(f"{unknown[0]}: unknown graph_nav option; known: {', '.join(KNOB_NAMES)}")
    defaults = {"step_cost": 0.0, "expert_looks": True, "expert_explores": False, "numbered": False,
                "marked": False}
    values: dict[str, Any] = {**defaults, **PRESETS[size]}
    values.update({k: v for k, v in overrides.items() if v is not None})
    n, b, d = values["num_rooms"], values["branching"], values["distractors"]
    if not isinstance(n, int) or isinstance(n, bool) or not 4 <= n <= MAX_ROOMS:
        raise ValueError(f"num_rooms: expected an int from 4 to {MAX_ROOMS}, got {n!r}")
    if not isinstance(b, int | float) or isinstance(b, bool) or not 0.0 <= b <= 1.0:
        raise ValueError(f"branching: expected a number from 0 to 1, got {b!r}")
    if not isinstance(d, int) or isinstance(d, bool) or d < 0:
        raise ValueError(f"distractors: expected an int >= 0, got {d!r}")
    if values["verbosity"] not in VERBOSITIES:
        raise ValueError(f"verbosity: expected one of {VERBOSITIES}, got {values['verbosity']!r}")
    c = values["step_cost"]
    if not isinstance(c, int | float) or isinstance(c, bool) or not math.isfinite(c) or c < 0:
        raise ValueError(f"step_cost: expected a finite number >= 0, got {c!r}")
    for flag in ("expert_looks", "expert_explores", "numbered", "marked"):
        if not isinstance(values[flag], bool):
            raise ValueError(f"{flag}: expected a bool, got {values[flag]!r}")
    return Knobs(n, float(b), d, values["verbosity"], float(c), values["expert_looks"],
                 values["expert_explores"], values["numbered"], values["marked"])


@dataclass(frozen=True)
class World:
    """The hidden, fixed part of an episode. Nodes of ``graph`` are room names."""

    graph: nx.Graph
    start: str
    goal: str
    lock_room: str
    key_room: str
    key: str
    material: str
    items: dict[str, tuple[str, ...]]
    flavour: dict[str, tuple[str, ...]]


def maze_graph(num_cells: int, branching: float, rng: random.Random) -> nx.Graph:
    """A connected maze on the first ``num_cells`` cells (row-major, nodes ``0..num_cells-1``) of a
    near-square grid: a depth-first-search spanning tree plus a ``branching`` fraction of the other grid
    edges."""
    cols = -(-num_cells // max(1, math.isqrt(num_cells)))
    grid = nx.Graph()
    grid.add_nodes_from(range(num_cells))
    grid.add_edges_from((i, i + 1) for i in range(num_cells - 1) if (i + 1) % cols)
    grid.add_edges_from((i, i + cols) for i in range(num_cells - cols))
    maze = nx.Graph()
    maze.add_nodes_from(range(num_cells))
    first = rng.randrange(num_cells)
    seen, stack = {first}, [first]
    while stack:
        fresh = [n for n in sorted(grid[stack[-1]]) if n not in seen]
        if not fresh:
            stack.pop()
            continue
        nxt = rng.choice(fresh)
        maze.add_edge(stack[-1], nxt)
        seen.add(nxt)
        stack.append(nxt)
    walls = sorted(tuple(sorted(e)) for e in grid.edges if not maze.has_edge(*e))
    maze.add_edges_from(rng.sample(walls, round(branching * len(walls))))
    return maze


def _far_room(graph: nx.Graph, source: str, rng: random.Random) -> str:
    dist = nx.single_source_shortest_path_length(graph, source)
    longest = max(dist.values())
    return rng.choice(sorted(r for r, d in dist.items() if d >= FAR * longest))


def build_world(knobs: Knobs, rng: random.Random) -> World:
    """Draw the hidden maze, placements and items of one episode from ``rng`` alone."""
    names = rng.sample([f"{a}-{n}" for a in _ADJECTIVES for n in _NOUNS], knobs.num_rooms)
    maze = maze_graph(knobs.num_rooms - 1, knobs.branching, rng)
    graph = nx.Graph((names[a], names[b]) for a, b in maze.edges)
    start = rng.choice(names[:-1])
    key_room = _far_room(graph, start, rng)
    lock_room = _far_room(graph, key_room, rng)
    goal = names[-1]
    graph.add_edge(lock_room, goal)
    material, *wrong = rng.sample(_MATERIALS, len(_MATERIALS))
    items: dict[str, list[str]] = {name: [] for name in names}
    items[key_room].append(f"{material} key")
    for _ in range(knobs.distractors):
        junk = f"{rng.choice(wrong)} key" if rng.random() < 0.5 else rng.choice(_JUNK)
        items[rng.choice(names[:-1])].append(junk)
    flavour = {name: tuple(rng.sample(_FLAVOUR, 3)) for name in names}
    frozen_items = {room: tuple(things) for room, things in items.items()}
    return World(graph, start, goal, lock_room, key_room, f"{material} key", material, frozen_items, flavour)


def _normal(text: str) -> str:
    text = " ".join(text.lower().split())
    for article in ("a ", "an ", "the "):
        text = text.removeprefix(article)
    return text


def _q(name: str) -> str:
    """A room or item name as the agent sees it: a JSON string, exactly as a tool call writes it (see the
    module docstring); a malformed argument echoed back in an error stays unambiguous."""
    return json.dumps(name)


def _qs(names: list[str]) -> str:
    return ", ".join(_q(n) for n in names)


def _listing(words: list[str]) -> str:
    """Already shown words as a list in prose: ``a``, ``a and b``, ``a, b and c``."""
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


def _a(word: str) -> str:
    return ("an " if word[0] in "aeiou" else "a ") + word


class GraphNav(ToolEnv):
    """Explore a maze of rooms, find the key to the locked door and walk out; see the module docstring."""

    name = "graph_nav"
    description = "Partly observed maze: find the key, unlock the door to the exit (10 to 200+ turns)."
    system_prompt = (
        "You explore a building of connected rooms using tools. You only see the room you are in, and "
        "only when you look. Call one or more tools each turn. A reply with no tool call ends the episode "
        "as given up, so keep calling tools until you are out."
    )

    def __init__(self, *, size: str = "medium", **knobs: Any) -> None:
        super().__init__()
        self._options = {"size": size, **knobs}
        self.knobs = make_knobs(**self._options)

    def setup(self, rng: random.Random, options: dict) -> str:
        """Build a fresh hidden world; ``options`` may override any constructor knob for this episode."""
        self.knobs = make_knobs(**{**self._options, **(options or {})})
        self.world = build_world(self.knobs, rng)
        self._room = self.world.start
        self._items = {room: list(things) for room, things in self.world.items.items()}
        self._inventory: list[str] = []
        self._unlocked = False
        self._done = False
        self._visited = [self._room]
        self._known_exits: dict[str, list[str]] = {}
        self._seen_items: dict[str, list[str]] = {}
        self._hops: dict[str, dict[str, str]] = {}
        intro = (
            f"Find the way out of this building of {self.knobs.num_rooms} rooms. The exit is behind a locked "
            "door; the key that opens it lies in one of the rooms, among other things. Take the key, unlock "
            "the door and walk through it."
        )
        return intro + "\n\n" + self._describe()

    @property
    def room(self) -> str:
        """The room the agent is in (for tests and debugging; the agent learns it from observations)."""
        return self._room

    # ---- what the agent sees -------------------------------------------------------------------------

    def _exits(self, room: str) -> list[str]:
        locked = room == self.world.lock_room and not self._unlocked
        return sorted(r for r in self.world.graph[room] if not (locked and r == self.world.goal))

    def _doors(self, room: str) -> list[str]:
        """The exits of ``room`` in the order ``numbered`` counts them: the open passages by name, then the
        door to the goal, locked or not (so a number never changes within an episode)."""
        w = self.world
        passages = sorted(r for r in w.graph[room] if r != w.goal)
        return passages + ([w.goal] if room == w.lock_room else [])

    def _shown(self, names: list[str], *, exits: bool = False) -> list[str]:
        """``names`` as the agent sees them: quoted, each after its number (from 1) where ``numbered``;
        with ``exits`` and ``marked``, a room already visited is followed by ``(visited)``."""
        shown = [_q(n) for n in names]
        if self.knobs.numbered:
            shown = [f"[{i}] {name}" for i, name in enumerate(shown, 1)]
        if exits and self.knobs.marked:
            visited = set(self._visited)
            shown = [f"{name} (visited)" if room in visited else name
                     for room, name in zip(names, shown, strict=True)]
        return shown

    def _pick(self, argument: str, value: str, names: list[str]) -> str:
        """A tool argument as a name: where ``numbered`` and ``value`` is a number, the name it numbers in
        ``names`` (ValueError, naming ``argument``, for a number that is not listed); else ``value``."""
        number = value.strip() if isinstance(value, str) else ""
        if not (self.knobs.numbered and number.isascii() and number.isdigit()):
            return value
        if not 1 <= int(number) <= len(names):
            listed = ", ".join(self._shown(names)) or "nothing"
            raise ValueError(f"{argument}: nothing here is numbered [{int(number)}]; listed: {listed}")
        return names[int(number) - 1]

    def _ref(self, name: str, names: list[str]) -> str:
        """How the experts write ``name``, one of ``names``: its number where ``numbered``, else itself."""
        return str(names.index(name) + 1) if self.knobs.numbered else name

    def _describe(self) -> str:
        """Describe the current room and record what the agent now knows (for ``state_digest``)."""
        room, w, verbosity = self._room, self.world, self.knobs.verbosity
        exits, things = self._exits(room), self._items[room]
        self._looked_here = True
        self._known_exits[room] = exits
        self._seen_items[room] = list(things)
        has_lock = room == w.lock_room and not self._unlocked
        if self.knobs.numbered:  # the passages, then the door to the goal, numbered in that order
            shown = self._shown(self._doors(room), exits=True)
            door = shown[-1] if room == w.lock_room else ""
            passages = shown[:-1] if has_lock else shown  # unlocked, the door is an exit, as unnumbered
        else:
            passages, door = self._shown(exits, exits=True), _q(w.goal)
        shown_things = self._shown(things)
        if verbosity == "terse":
            parts = [_q(room), "exits: " + ", ".join(passages)]
            parts += [f"locked: {door} ({w.material} lock)"] if has_lock else []
            parts += ["items: " + ", ".join(shown_things)] if things else []
            return " | ".join(parts)
        lines = [f"You are in {_q(room)}."]
        if verbosity == "verbose":
            lines += list(w.flavour[room]) + [f"A passage leads to {r}." for r in passages]
        else:
            lines.append(f"Exits: {', '.join(passages)}.")
        if has_lock:
            lines.append(f"A door to {door} is locked with {_a(w.material)} lock.")
        elif room == w.lock_room:
            lines.append(f"The door to {door} stands unlocked.")
        lines.append(f"You see: {_listing(shown_things)}." if things else "There is nothing here to take.")
        return " ".join(lines)

    def _charge(self) -> None:
        if self.knobs.step_cost:
            self.add_reward(-self.knobs.step_cost)

    def _adjacent(self, room: str, argument: str) -> str:
        wanted = _normal(room)
        if wanted == self._room:
            raise ValueError(f"{argument}: you are already in {_q(self._room)}")
        if wanted not in self.world.graph[self._room]:
            exits = ", ".join(self._shown(self._doors(self._room) if self.knobs.numbered
                                          else self._exits(self._room)))
            raise ValueError(f"{argument}: no passage from {_q(self._room)} to {_q(room)}; exits: {exits}")
        return wanted

    # ---- tools ---------------------------------------------------------------------------------------

    @tool
    def look(self) -> str:
        """Describe the room you are in: its exits, any locked door and the items lying there."""
        self._charge()
        return self._describe()

    @tool
    def move(self, to: str) -> str:
        """Walk to an adjacent room through an open passage or an unlocked door.

        Args:
            to: the name of an adjacent room, as look lists it (e.g. "dusty-attic"), or its number where
                look numbers the exits (e.g. "2").
        """
        self._charge()
        target = self._adjacent(self._pick("to", to, self._doors(self._room)), "to")
        if target == self.world.goal and not self._unlocked:
            return f"The door to {_q(target)} is locked with {_a(self.world.material)} lock."
        self._room, self._looked_here = target, False
        if target not in self._visited:
            self._visited.append(target)
        if target == self.world.goal:
            self._done = True
            self.finish(1.0, success=True)
            return f"You step through the door into {_q(target)}. You found the way out!"
        return f"You walk into {_q(target)}."

    @tool
    def take(self, item: str) -> str:
        """Pick up an item lying in the current room.

        Args:
            item: the item's name, as look lists it (e.g. "brass key"), or its number where look numbers
                the items.
        """
        self._charge()
        here = self._items[self._room]
        wanted = _normal(self._pick("item", item, here))
        if wanted not in here:
            listed = ", ".join(self._shown(here)) or "nothing"
            raise ValueError(f"item: there is no {_q(item)} in {_q(self._room)}; here: {listed}")
        here.remove(wanted)
        self._inventory.append(wanted)
        self._seen_items[self._room] = list(here)
        return f"You take the {_q(wanted)}."

    @tool
    def unlock(self, room: str) -> str:
        """Unlock the locked door from the current room to an adjacent room, with a key you carry.

        Args:
            room: the room behind the locked door, or its number where look numbers the exits.
        """
        self._charge()
        target, w = self._adjacent(self._pick("room", room, self._doors(self._room)), "room"), self.world
        if target != w.goal or self._unlocked:
            raise ValueError(f"room: the way to {_q(target)} is not locked")
        if w.key in self._inventory:
            self._unlocked = True
            return f"You unlock the door to {_q(target)} with the {_q(w.key)}."
        keys = [thing for thing in self._inventory if thing.endswith(" key")]
        if keys:
            return f"None of your keys ({_qs(keys)}) fits the {w.material} lock."
        return f"You carry no key. The door to {_q(target)} has {_a(w.material)} lock."

    @tool
    def inventory(self) -> str:
        """List the items you carry."""
        self._charge()
        return f"You carry: {_qs(self._inventory)}." if self._inventory else "You carry nothing."

    # ---- expert and digest ---------------------------------------------------------------------------

    def expert_action(self) -> str | None:
        """The oracle's next tool call: shortest paths on the hidden graph to key, lock and goal."""
        if self._done:
            return None
        if self.knobs.expert_explores:
            return self._explorer_action()
        w = self.world
        if self.knobs.expert_looks and not self._looked_here:
            return format_tool_call("look", {})
        if w.key not in self._inventory:
            target = w.key_room  # nothing can move the key but take
            if target == self._room:
                return format_tool_call("take", {"item": self._ref(w.key, self._items[self._room])})
        elif not self._unlocked and self._room == w.lock_room:
            return format_tool_call("unlock", {"room": self._ref(w.goal, self._doors(self._room))})
        else:
            target = w.goal if self._unlocked else w.lock_room
        if target not in self._hops:  # one BFS per target and episode; a room's BFS parent is its next step
            preds = nx.predecessor(w.graph, target)
            self._hops[target] = {room: before[0] for room, before in preds.items() if before}
        return self._move(self._hops[target][self._room])

    def _explorer_action(self) -> str | None:
        """The explorer's next tool call (``expert_explores``), from what the agent has seen only: the
        rooms it looked in (their exits and items), the rooms it visited and what it carries."""
        w = self.world
        if not self._looked_here:
            return format_tool_call("look", {})
        keys = [thing for thing in self._seen_items[self._room] if thing.endswith(" key")]
        if keys:
            return format_tool_call("take", {"item": self._ref(keys[0], self._items[self._room])})
        lock_seen = w.lock_room in self._known_exits  # its look showed the locked door and the material
        if lock_seen and w.key in self._inventory:
            if self._room == w.lock_room:
                if not self._unlocked:
                    return format_tool_call("unlock", {"room": self._ref(w.goal, self._doors(self._room))})
                return self._move(w.goal)
            return self._walk_towards({w.lock_room})
        visited = set(self._visited)
        frontier = {r for exits in self._known_exits.values() for r in exits if r not in visited}
        return self._walk_towards(frontier) if frontier else None

    def _walk_towards(self, targets: set[str]) -> str:
        """One move along a shortest path, over the passages seen so far, to the nearest of ``targets``
        (ties broken by name)."""
        seen = nx.Graph((room, exit_) for room, exits in self._known_exits.items() for exit_ in exits)
        distance = nx.single_source_shortest_path_length(seen, self._room)
        nearest = min((distance[t], t) for t in targets if t in distance)[1]
        return self._move(nx.shortest_path(seen, self._room, nearest)[1])

    def _move(self, room: str) -> str:
        """The experts' call that moves to the adjacent ``room``."""
        return format_tool_call("move", {"to": self._ref(room, self._doors(self._room))})

    def state_digest(self) -> str:
        """What the agent has observed so far: room, inventory, visited rooms, unexplored exits, the
        locked door and the items it has seen."""
        w = self.world
        visited = set(self._visited)
        frontier = sorted({r for exits in self._known_exits.values() for r in exits if r not in visited})
        lines = [
            f"Room: {_q(self._room)}.",
            "Inventory: " + (_qs(self._inventory) or "nothing") + ".",
            f"Visited ({len(self._visited)}): {_qs(self._visited)}.",
            "Seen but not visited: " + (_qs(frontier) or "none") + ".",
        ]
        if w.lock_room in self._known_exits:
            state = "unlocked" if self._unlocked else "locked"
            lines.append(f"Door {_q(w.lock_room)} -> {_q(w.goal)}: {w.material} lock, {state}.")
        seen = [f"{_qs(things)} in {_q(room)}" for room, things in self._seen_items.items() if things]
        lines.append("Items seen: " + ("; ".join(seen) or "none") + ".")
        return "\n".join(lines)
