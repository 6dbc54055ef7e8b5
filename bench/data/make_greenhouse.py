"""Generate a second fictional domain: the greenhouse irrigation controllers (deterministic).

    python bench/data/make_greenhouse.py

A domain that no model has seen, unlike the fleet in make_fleet.py in its shape: eight
controllers with numbers (flow, tank, pressure, zones), colours (status light, casing)
and fault-code meanings, so that evaluations can be run on data they were not tuned on.

Writes:
  bench/data/greenhouse_manual/*.md  the knowledge base only the cloud has: one page per
                                     controller, plus the fault codes
  bench/data/greenhouse_facts.json   the facts with several phrasings each, in the format of
                                     fleet_facts.json ({"fact", "answer", "answers", "phrasings"})
"""

from __future__ import annotations

import json
import random
from pathlib import Path

HERE = Path(__file__).parent
SEED = 20261201

NAMES = ["Juniper", "Sorrel", "Tamarack", "Yarrow", "Bracken", "Alder", "Quince", "Vetch"]
COLOURS = ["amber", "violet", "teal", "crimson", "silver", "olive", "indigo", "coral"]
CODES = ["F12", "F27", "F31", "F44", "F58", "F63", "F75", "F86"]
MEANINGS = ["a clogged intake filter", "a stuck drain valve", "low tank level",
            "a failed moisture probe", "reversed pump wiring", "a frozen supply line",
            "a drifting pressure sensor", "a blocked drip line"]  # fmt: skip


def facts() -> tuple[list[dict[str, object]], dict[str, str]]:
    rng = random.Random(SEED)
    flows = rng.sample(range(14, 96), len(NAMES))
    tanks = rng.sample(range(120, 990, 10), len(NAMES))
    zones = rng.sample(range(3, 29), len(NAMES))
    lights = rng.sample(COLOURS, len(NAMES))
    codes = rng.sample(CODES, len(NAMES))
    out: list[dict[str, object]] = []
    pages: dict[str, str] = {}
    for i, name in enumerate(NAMES):
        key = name.lower()
        pressure = f"{rng.randint(12, 58) / 10:.1f}"
        meaning = MEANINGS[CODES.index(codes[i])]
        out += [
            {"fact": f"{key}.flow", "answer": f"{flows[i]} litres per minute",
             "answers": [str(flows[i])], "phrasings": [
                 f"What is the maximum flow rate of the {name} controller?",
                 f"How many litres per minute can the {name} pump deliver?",
                 f"What flow does a {name} unit reach at most?",
                 f"Tell me the {name}'s peak flow rate."]},
            {"fact": f"{key}.tank", "answer": f"{tanks[i]} litres",
             "answers": [str(tanks[i])], "phrasings": [
                 f"How large is the water tank of the {name} controller?",
                 f"What is the tank capacity of the {name}?",
                 f"How many litres does a {name} tank hold?",
                 f"Give the {name}'s reservoir size."]},
            {"fact": f"{key}.pressure", "answer": f"{pressure} bar",
             "answers": [pressure], "phrasings": [
                 f"What is the operating pressure of the {name} controller?",
                 f"At how many bar does the {name} pump run?",
                 f"What pressure does a {name} unit work at?",
                 f"Tell me the {name}'s line pressure."]},
            {"fact": f"{key}.zones", "answer": f"{zones[i]} zones",
             "answers": [str(zones[i])], "phrasings": [
                 f"How many irrigation zones can the {name} controller drive?",
                 f"How many zones does the {name} support?",
                 f"What is the zone count of a {name} unit?",
                 f"Up to how many zones can a {name} water?"]},
            {"fact": f"{key}.light", "answer": f"{lights[i]}",
             "answers": [lights[i]], "phrasings": [
                 f"What colour is the status light of the {name} controller?",
                 f"Which colour does the {name}'s status lamp show?",
                 f"What colour is a {name} unit's indicator light?",
                 f"Name the colour of the {name} status light."]},
        ]  # fmt: skip
        pages[f"{key}.md"] = (
            f"# {name} irrigation controller\n\n"
            f"The {name} is a greenhouse irrigation controller of the Meadowline range.\n\n"
            f"## Specifications\n\n"
            f"- Maximum flow rate: the {name} pump delivers up to {flows[i]} litres per minute.\n"
            f"- Tank: the {name} holds {tanks[i]} litres of water.\n"
            f"- Operating pressure: the {name} runs at {pressure} bar.\n"
            f"- Zones: one {name} drives up to {zones[i]} irrigation zones.\n"
            f"- Status light: the {name}'s status light is {lights[i]}.\n\n"
            f"## Faults\n\nThe {name} most often reports fault {codes[i]} ({meaning}).\n"
        )
    for code, meaning in zip(CODES, MEANINGS, strict=True):
        out.append(
            {
                "fact": f"fault.{code.lower()}",
                "answer": meaning,
                "answers": [meaning.split()[-2] + " " + meaning.split()[-1]],
                "phrasings": [
                    f"What does fault code {code} mean on a Meadowline controller?",
                    f"A controller shows {code}. What is wrong?",
                    f"What is fault {code}?",
                    f"Explain the Meadowline fault {code}.",
                ],
            }
        )
    pages["fault_codes.md"] = "# Meadowline fault codes\n\n" + "".join(
        f"- **{c}**: {m}.\n" for c, m in zip(CODES, MEANINGS, strict=True)
    )
    return out, pages


def main() -> None:
    out, pages = facts()
    manual = HERE / "greenhouse_manual"
    manual.mkdir(exist_ok=True)
    for name, text in pages.items():
        (manual / name).write_text(text)
    (HERE / "greenhouse_facts.json").write_text(json.dumps(out, indent=1) + "\n")
    print(f"{len(out)} facts, {len(pages)} pages in {manual}")


if __name__ == "__main__":
    main()
