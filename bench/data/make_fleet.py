"""Generate the router evaluation set and the fictional fleet manual (deterministic).

    python bench/data/make_fleet.py

Writes:
  bench/data/fleet_manual/*.md  the knowledge base only the cloud has: one page per
                                robot model of a fictional fleet, plus error codes
  bench/data/router_eval.jsonl  questions with checkable answers: general knowledge of
                                graded difficulty (capitals, arithmetic, everyday facts)
                                and questions about the fleet, several phrasings per fact
  bench/data/fleet_facts.json   the facts with all their phrasings (for the learning loop)

Each eval line: {"id", "question", "answers": [accepted strings], "domain": "general"|"fleet",
"difficulty": 1-3, "fact": id, "phrasing": k}.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

HERE = Path(__file__).parent
SEED = 20261123

CAPITALS = [  # (country, capital, difficulty)
    ("France", "Paris", 1), ("Japan", "Tokyo", 1), ("Italy", "Rome", 1), ("Germany", "Berlin", 1),
    ("Spain", "Madrid", 1), ("the United Kingdom", "London", 1), ("Russia", "Moscow", 1),
    ("Egypt", "Cairo", 1), ("China", "Beijing", 1), ("Greece", "Athens", 1),
    ("Canada", "Ottawa", 2), ("Australia", "Canberra", 2), ("Brazil", "Brasilia", 2),
    ("Turkey", "Ankara", 2), ("Norway", "Oslo", 2), ("Portugal", "Lisbon", 2), ("Kenya", "Nairobi", 2),
    ("Argentina", "Buenos Aires", 2), ("Poland", "Warsaw", 2), ("Ireland", "Dublin", 2),
    ("Mongolia", "Ulaanbaatar", 3), ("Kazakhstan", "Astana", 3), ("Bhutan", "Thimphu", 3),
    ("Burkina Faso", "Ouagadougou", 3), ("Slovenia", "Ljubljana", 3), ("Paraguay", "Asuncion", 3),
    ("Laos", "Vientiane", 3), ("Eritrea", "Asmara", 3), ("Kyrgyzstan", "Bishkek", 3),
    ("Suriname", "Paramaribo", 3),
]  # fmt: skip

FACTS = [  # (question, answers, difficulty)
    ("How many legs does a spider have?", ["eight", "8"], 1),
    ("What colour is the sky on a clear day?", ["blue"], 1),
    ("How many days are in a week?", ["seven", "7"], 1),
    ("What do bees make?", ["honey"], 1),
    ("What is the largest planet in our solar system?", ["jupiter"], 1),
    ("How many hours are in a day?", ["24", "twenty-four", "twenty four"], 1),
    ("What is frozen water called?", ["ice"], 1),
    ("Which animal is known as the king of the jungle?", ["lion"], 1),
    ("At what temperature in Celsius does water boil at sea level?", ["100"], 2),
    ("How many continents are there?", ["seven", "7"], 2),
    ("What gas do plants absorb from the air?", ["carbon dioxide", "co2"], 2),
    ("Who wrote Romeo and Juliet?", ["shakespeare"], 2),
    ("What is the chemical symbol for gold?", ["au"], 2),
    ("How many sides does a hexagon have?", ["six", "6"], 2),
    ("What is the hardest natural substance?", ["diamond"], 2),
    ("Which planet is known as the Red Planet?", ["mars"], 2),
    ("What is the chemical symbol for sodium?", ["na"], 3),
    ("In what year did the first human land on the Moon?", ["1969"], 3),
    ("What is the smallest prime number?", ["two", "2"], 3),
    ("How many bones are in the adult human body?", ["206"], 3),
    ("What is the square root of 144?", ["twelve", "12"], 3),
    ("Which element has the atomic number 1?", ["hydrogen"], 3),
    ("Who painted the Mona Lisa?", ["leonardo", "da vinci"], 3),
    ("What is the longest river in Africa?", ["nile"], 3),
]  # fmt: skip

NAMES = ["Kestrel", "Heron", "Marten", "Osprey", "Badger", "Lynx", "Puffin", "Otter"]
COLOURS = ["orange", "teal", "yellow", "graphite", "red", "white", "green", "violet"]
ERRORS = ["lidar occluded", "left wheel motor stalled", "battery over temperature",
          "gripper pressure low", "emergency stop pressed", "map not loaded"]  # fmt: skip

ATTRIBUTES = {
    # key: (phrasings, unit-less answer formatter)
    "payload": ["What is the maximum payload of the {name} robot?",
                "How much weight can the {name} carry?",
                "What load can a {name} unit lift at most?",
                "Tell me the {name}'s payload limit."],
    "runtime": ["How long does the {name} run on one battery charge?",
                "What is the battery runtime of the {name} robot?",
                "How many hours can a {name} operate before recharging?",
                "On a full charge, how long does the {name} last?"],
    "speed": ["What is the top speed of the {name} robot?",
              "How fast can the {name} drive at most?",
              "What is the maximum speed of a {name} unit?",
              "Tell me the {name}'s speed limit."],
    "colour": ["What colour is the {name} robot's chassis?",
               "What is the chassis colour of the {name}?",
               "Which colour is a {name} unit painted?",
               "The {name} robot comes in which colour?"],
    "dock": ["Which charging dock does the {name} use?",
             "What dock model charges the {name} robot?",
             "Name the charging station for a {name} unit.",
             "The {name} recharges at which dock?"],
}  # fmt: skip


def build() -> tuple[list[dict[str, object]], dict[str, str], list[dict[str, object]]]:
    rng = random.Random(SEED)
    robots = []
    for i, name in enumerate(NAMES):
        robots.append({
            "name": name,
            "payload": f"{rng.choice([3, 5, 7, 9, 12, 15, 18, 22])}.{rng.choice([0, 5])} kg",
            "runtime": f"{rng.choice([3, 4, 5, 6, 7, 8, 9, 11])}.{rng.choice([0, 5])} hours",
            "speed": f"{rng.choice([0.8, 1.2, 1.5, 1.8, 2.1, 2.4, 2.7, 3.3])} m/s",
            "colour": COLOURS[i],
            "dock": f"D-{rng.randint(100, 999)}",
        })  # fmt: skip
    pages: dict[str, str] = {}
    facts: list[dict[str, object]] = []
    for r in robots:
        n = r["name"]
        pages[f"{n.lower()}.md"] = (
            f"# {n} robot\n\n"
            f"The {n} is a wheeled service robot in the Acme Fleet.\n\n"
            f"## Specifications\n\n"
            f"The maximum payload of the {n} robot is {r['payload']}.\n"
            f"The {n} runs for {r['runtime']} on one battery charge.\n"
            f"The top speed of the {n} robot is {r['speed']}.\n"
            f"The chassis of the {n} robot is painted {r['colour']}.\n"
            f"The {n} recharges at the {r['dock']} charging dock.\n"
        )
        for key, phrasings in ATTRIBUTES.items():
            value = str(r[key])
            number = value.split(" ")[0]
            facts.append({
                "fact": f"{n.lower()}.{key}", "answer": value, "answers": [number],
                "phrasings": [p.format(name=n) for p in phrasings],
            })  # fmt: skip
    codes = {}
    for meaning in ERRORS:
        code = f"E-{rng.randint(100, 999)}"
        codes[code] = meaning
    pages["error_codes.md"] = "# Acme Fleet error codes\n\n" + "".join(
        f"Error code {c} means {m}.\n\n" for c, m in codes.items()
    )
    for code, meaning in codes.items():
        key = meaning.split(" ")[0]
        facts.append({
            "fact": f"error.{code}", "answer": meaning, "answers": [key],
            "phrasings": [f"What does error code {code} mean on an Acme Fleet robot?",
                          f"An Acme robot shows {code}. What is wrong?",
                          f"What is the meaning of fleet error {code}?",
                          f"Explain the Acme error code {code}."],
        })  # fmt: skip

    rows: list[dict[str, object]] = []
    for country, capital, d in CAPITALS:
        rows.append({"question": f"What is the capital of {country}?", "answers": [capital.lower()],
                     "domain": "general", "difficulty": d})  # fmt: skip
    for a, b, d in [(2, 3, 1), (4, 5, 1), (7, 2, 1), (6, 3, 1), (9, 8, 2), (15, 7, 2), (23, 19, 2),
                    (48, 36, 2), (127, 58, 3), (346, 289, 3), (593, 748, 3), (1234, 4321, 3)]:  # fmt: skip
        rows.append(
            {
                "question": f"What is {a} plus {b}?",
                "answers": [str(a + b)],
                "domain": "general",
                "difficulty": d,
            }
        )
    for a, b, d in [(3, 4, 1), (5, 6, 2), (7, 8, 2), (12, 11, 3), (17, 13, 3), (23, 14, 3)]:
        rows.append(
            {
                "question": f"What is {a} times {b}?",
                "answers": [str(a * b)],
                "domain": "general",
                "difficulty": d,
            }
        )
    for a, b, d in [(10, 4, 1), (50, 18, 2), (100, 37, 2), (403, 278, 3)]:
        rows.append(
            {
                "question": f"What is {a} minus {b}?",
                "answers": [str(a - b)],
                "domain": "general",
                "difficulty": d,
            }
        )
    for q, answers, d in FACTS:
        rows.append({"question": q, "answers": answers, "domain": "general", "difficulty": d})
    for f in facts:
        for k, phrasing in enumerate(f["phrasings"][:3]):  # type: ignore[index]
            rows.append({"question": phrasing, "answers": f["answers"], "domain": "fleet",
                         "difficulty": 3, "fact": f["fact"], "phrasing": k})  # fmt: skip
    for i, row in enumerate(rows):
        row["id"] = f"q{i:04d}"
    return rows, pages, facts


# The device's everyday traffic outside the domain: questions it mostly answers well
# by itself. None of them is in router_eval.jsonl (the general evaluation set); the
# learning loop sends them during collection, so confident local answers become
# replay records (device.log.replay_rate).
TRAFFIC_CAPITALS = [
    "Sweden",
    "Finland",
    "Denmark",
    "Austria",
    "the Netherlands",
    "Belgium",
    "Switzerland",
    "India",
    "Mexico",
    "Peru",
    "Chile",
    "Cuba",
    "Thailand",
    "Vietnam",
    "Iran",
    "Nigeria",
    "Morocco",
    "South Korea",
    "Hungary",
    "Ukraine",
    "Colombia",
    "Venezuela",
    "Indonesia",
    "the Philippines",
    "Pakistan",
    "Israel",
    "Saudi Arabia",
    "Czech Republic",
]
TRAFFIC_FACTS = [
    "How many legs does a dog have?",
    "What colour is grass?",
    "How many months are in a year?",
    "How many wheels does a bicycle have?",
    "What is the opposite of hot?",
    "How many minutes are in an hour?",
    "What colour is snow?",
    "How many legs does an insect have?",
    "What is the closest star to Earth?",
    "How many players are on a soccer team?",
    "What do caterpillars turn into?",
    "How many seconds are in a minute?",
    "What is the freezing point of water in degrees Celsius?",
    "Which planet do we live on?",
    "What colour are bananas when they are ripe?",
    "How many sides does a triangle have?",
    "How many sides does a square have?",
    "What is the largest ocean on Earth?",
    "Who wrote Hamlet?",
    "What is the chemical symbol for water?",
]


def general_traffic() -> list[str]:
    rng = random.Random(7)
    qs = [f"What is the capital of {c}?" for c in TRAFFIC_CAPITALS] + list(TRAFFIC_FACTS)
    for _ in range(16):
        a, b = rng.randint(2, 40), rng.randint(2, 40)
        qs.append(f"What is {a} plus {b}?")
    for _ in range(8):
        a, b = rng.randint(2, 12), rng.randint(2, 9)
        qs.append(f"What is {a} times {b}?")
    return qs


def main() -> None:
    rows, pages, facts = build()
    traffic = general_traffic()
    asked = {r["question"] for r in rows}
    assert not asked & set(traffic), "traffic must not overlap the evaluation set"
    (HERE / "general_traffic.txt").write_text("\n".join(traffic) + "\n")
    manual = HERE / "fleet_manual"
    manual.mkdir(exist_ok=True)
    for old in manual.glob("*.md"):
        old.unlink()
    for name, text in pages.items():
        (manual / name).write_text(text)
    with (HERE / "router_eval.jsonl").open("w") as fh:
        for row in rows:
            fh.write(json.dumps(row) + "\n")
    (HERE / "fleet_facts.json").write_text(json.dumps(facts, indent=1) + "\n")
    n_fleet = sum(r["domain"] == "fleet" for r in rows)
    print(
        f"{len(rows)} questions ({len(rows) - n_fleet} general, {n_fleet} fleet), {len(pages)} manual pages"
    )


if __name__ == "__main__":
    main()
