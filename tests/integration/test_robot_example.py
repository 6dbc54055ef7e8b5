"""The robot example (examples/apps/robot): spoken-style commands become validated tool
calls on the real device model, an unsure one escalates to a real gRPC cloud on
127.0.0.1 (the default model in torch, the robot's manual as its knowledge base), and
after a network drop the loop goes on, refusing what it is unsure of."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parents[2] / "examples" / "apps" / "robot"))

import robot as app
from warehouse import Rejected, Robot, tools, validate


def test_the_robot_validates_every_call_before_running_any() -> None:
    bot = Robot()
    with pytest.raises(Rejected, match="bay"):
        bot.run([("move_to", {"bay": 9, "speed": "normal"})])
    with pytest.raises(Rejected, match="unknown crate 'bananas'"):
        bot.run([("pick", {"crate": "bananas"})])
    with pytest.raises(Rejected, match="not holding"):
        bot.run([("place", {"bay": 1})])
    with pytest.raises(Rejected, match="unknown action"):
        bot.run([("jump", {})])
    with pytest.raises(Rejected, match="speed"):
        bot.run([("move_to", {"bay": 2, "speed": "warp"})])
    # a plan runs whole or not at all: the fragile glass crate may not go fast
    with pytest.raises(Rejected, match="fragile"):
        bot.run([("pick", {"crate": "glass"}), ("move_to", {"bay": 6, "speed": "fast"})])
    with pytest.raises(Rejected, match="Extra inputs"):
        bot.run([("stop", {"now": True})])
    with pytest.raises(Rejected, match="at bay 3, not bay 6"):  # pick drives to the crate
        bot.run([("pick", {"crate": "glass"}), ("place", {"bay": 6})])
    with pytest.raises(Rejected, match="already holding"):
        bot.run([("pick", {"crate": "glass"}), ("pick", {"crate": "fish"})])
    assert bot.log == [] and bot.holding is None and bot.crates["glass"] == 3
    steps = bot.run([("pick", {"crate": "fish"}), ("move_to", {"bay": 6, "speed": "slow"}),
                     ("place", {"bay": 6})])  # fmt: skip
    assert [s.name for s in steps] == ["pick", "move_to", "place"]
    assert bot.crates["fish"] == 6 and bot.position == 6 and len(bot.log) == 3


def test_the_tools_carry_the_bounds_the_grammar_enforces() -> None:
    by_name = {t["function"]["name"]: t["function"]["parameters"] for t in tools()}
    assert set(by_name) == {"move_to", "pick", "place", "stop"}
    bay = by_name["move_to"]["properties"]["bay"]
    assert (bay["minimum"], bay["maximum"]) == (1, 6)
    assert by_name["move_to"]["properties"]["speed"]["enum"] == ["slow", "normal", "fast"]
    assert all(p["additionalProperties"] is False for p in by_name.values())


def test_a_spoken_command_splits_into_one_clause_per_call() -> None:
    assert app.clauses("pick up the apples crate, then go to bay 3; put it down.") == [
        "pick up the apples crate", "go to bay 3", "put it down"
    ]  # fmt: skip
    assert app.clauses("stop!") == ["stop"]


@pytest.mark.model
def test_a_scripted_session_with_escalation_and_a_network_drop(
    model_cache: Path, tmp_path: Path
) -> None:
    outcomes: list[Any] = []
    with app.session(tmp_path, cache_dir=model_cache) as (controller, cloud):
        assert cloud is not None
        bot = controller.robot
        for line in app.SCRIPT:
            if line == ":drop":
                cloud.drop()
                continue
            before = list(bot.log)
            out = controller.handle(line)
            outcomes.append(out)
            if out.status == "executed":
                # each call validated (and the plan ran whole, in order)
                steps = [validate(c.name, c.arguments) for c in out.calls]
                assert bot.log == before + [str(s) for s in steps]
            else:
                assert bot.log == before, out  # nothing of it ran
    bay4, apples, cold, after_drop, dock = outcomes
    # clear commands run from the device, with the effects they ask for
    assert (bay4.status, bay4.sources) == ("executed", ["local"])
    assert apples.status == "executed" and apples.sources == ["local"] * 3
    assert bot.log[:4] == ["move_to(bay=4, speed='normal')", "pick(crate='apples')",
                           "move_to(bay=3, speed='slow')", "place(bay=3)"]  # fmt: skip
    assert bot.crates["apples"] == 3
    # a vague command is handed to the cloud; whatever comes back is validated
    assert cold.escalated and {"cloud", "mixed"} & set(cold.sources), cold
    assert cold.status in ("executed", "rejected")
    # the network is gone: a clear command still runs, an unsure one is refused
    assert after_drop.status == "executed" and after_drop.sources == ["local"]
    assert bot.log[-1] == "move_to(bay=5, speed='slow')" and bot.position == 5
    assert dock.status == "refused" and dock.message.startswith("offline and unsure")
