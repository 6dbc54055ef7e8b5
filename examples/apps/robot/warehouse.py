"""A simulated warehouse robot: a mobile base with a gripper, bays 1-6, named crates.

Pure Python, no model: the robot's state, its actions as pydantic models (whose JSON
schemas are the tools the language model is constrained to), and the checks an action
must pass before it runs. A plan (the calls one command became) is checked as a whole
on a copy of the robot first, so either every call of it runs or none does: the robot
never executes an action that fails validation, and never stops half-way through a
command because its third call was wrong.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

BAYS = range(1, 7)
CRATES: Mapping[str, int] = {"apples": 1, "bolts": 2, "glass": 3, "flour": 4, "fish": 5}
"""Each crate and the bay it starts in (the manual says the same)."""
FRAGILE = frozenset({"glass"})
"""Crates the robot carries only at "slow" speed (manual/crates.md)."""

Speed = Literal["slow", "normal", "fast"]


class MoveTo(BaseModel):
    """Drive the base to a bay."""

    model_config = ConfigDict(extra="forbid")
    bay: int = Field(ge=BAYS.start, le=BAYS.stop - 1)
    speed: Speed


class Pick(BaseModel):
    """Drive to a crate's bay and lift the crate."""

    model_config = ConfigDict(extra="forbid")
    crate: str = Field(min_length=1, max_length=24)


class Place(BaseModel):
    """Put the held crate down in the bay the robot is at (the bay is a check)."""

    model_config = ConfigDict(extra="forbid")
    bay: int = Field(ge=BAYS.start, le=BAYS.stop - 1)


class Stop(BaseModel):
    """Stop the base and hold position."""

    model_config = ConfigDict(extra="forbid")


ACTIONS: Mapping[str, type[BaseModel]] = {
    "move_to": MoveTo,
    "pick": Pick,
    "place": Place,
    "stop": Stop,
}


def tools() -> list[dict[str, Any]]:
    """The actions as OpenAI-style tools: each one's parameters are its model's schema,
    so the grammar already keeps a bay within 1-6 and a speed among the three."""
    return [
        {
            "type": "function",
            "function": {
                "name": name,
                "description": (model.__doc__ or "").strip(),
                "parameters": model.model_json_schema(),
            },
        }
        for name, model in ACTIONS.items()
    ]


class Rejected(Exception):
    """An action the robot refuses: malformed, or impossible in its current state."""


@dataclass(frozen=True)
class Step:
    """One validated call: its name and its checked arguments."""

    name: str
    args: BaseModel

    def __str__(self) -> str:
        given = ", ".join(f"{k}={v!r}" for k, v in self.args.model_dump().items())
        return f"{self.name}({given})"


def validate(name: str, arguments: Mapping[str, Any]) -> Step:
    """A call's arguments checked by its pydantic model (whatever wrote them: the
    grammar makes them well-shaped, this makes sure).

    Raises:
        Rejected: an unknown action, or arguments its model refuses.
    """
    model = ACTIONS.get(name)
    if model is None:
        raise Rejected(f"unknown action {name!r}")
    try:
        return Step(name, model.model_validate(dict(arguments)))
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise Rejected(f"{name}: {where}: {first['msg']}") from exc


@dataclass
class Robot:
    """The robot's state and the log of what it did."""

    position: int = 1
    holding: str | None = None
    speed: Speed = "normal"
    crates: dict[str, int | None] = field(default_factory=lambda: dict(CRATES))
    """Where each crate is; None while the gripper holds it."""
    log: list[str] = field(default_factory=list)

    def check(self, step: Step) -> None:
        """Whether ``step`` can run now (its arguments are already validated).

        Raises:
            Rejected: unknown crate, gripper full or empty, wrong bay, too fast.
        """
        a = step.args
        if isinstance(a, Pick):
            if a.crate not in self.crates:
                raise Rejected(f"pick: unknown crate {a.crate!r} (known: {', '.join(self.crates)})")
            if self.holding is not None:
                raise Rejected(f"pick: already holding {self.holding!r}")
        elif isinstance(a, Place):
            if self.holding is None:
                raise Rejected("place: not holding a crate")
            if a.bay != self.position:
                raise Rejected(f"place: the robot is at bay {self.position}, not bay {a.bay}")
        elif isinstance(a, MoveTo) and self.holding in FRAGILE and a.speed != "slow":
            raise Rejected(f"move_to: {self.holding!r} is fragile, carried only at 'slow'")

    def apply(self, step: Step) -> None:
        """Run one checked step and log it."""
        a = step.args
        if isinstance(a, MoveTo):
            self.position, self.speed = a.bay, a.speed
        elif isinstance(a, Pick):
            bay = self.crates[a.crate]
            assert bay is not None
            self.position, self.holding, self.crates[a.crate] = bay, a.crate, None
        elif isinstance(a, Place):
            assert self.holding is not None
            self.crates[self.holding], self.holding = a.bay, None
        self.log.append(str(step))

    def run(self, calls: Sequence[tuple[str, Mapping[str, Any]]]) -> list[Step]:
        """Validate every call (arguments, then state, on a copy of the robot), then
        execute them all.

        Raises:
            Rejected: the first call that fails; nothing has been executed then.
        """
        steps = [validate(name, arguments) for name, arguments in calls]
        trial = copy.deepcopy(self)
        for step in steps:
            trial.check(step)
            trial.apply(step)
        for step in steps:
            self.apply(step)
        return steps

    def describe(self) -> str:
        held = self.holding or "nothing"
        return f"at bay {self.position}, holding {held}, speed {self.speed}"
