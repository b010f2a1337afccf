"""The embedded demo data set: SYNTHETIC labelled captions, generated here, seeded.

No real media lies behind these captions. They imitate what an audio or video captioner
writes about short clips of seven kinds of scene: each category has its own subjects,
actions, places and sounds, while settings, times and fillers are shared so that the
categories overlap as real captions do, and a small share of captions mention a second
category's sound. Category frequencies are unequal, like real streams. The point is a
data set on which the whole pipeline runs in minutes with no network; numbers measured
on it say nothing about real data.
"""

from __future__ import annotations

import numpy as np

from semcal.core.errors import UserError

# Unequal shares, roughly like the top categories of AudioSet-labelled captions.
CATEGORY_SHARES = {
    "animals": 0.26,
    "vehicles": 0.20,
    "people": 0.17,
    "weather": 0.12,
    "household": 0.11,
    "music": 0.08,
    "industry": 0.06,
}

VOCABULARY = {
    "animals": {
        "subjects": [
            "a dog",
            "a small puppy",
            "several birds",
            "a rooster",
            "a cat",
            "a flock of geese",
            "a horse",
            "a cow",
            "two ducks",
            "a crow",
            "a pig",
            "a goat",
        ],
        "actions": [
            "barks repeatedly",
            "chirps loudly",
            "crows",
            "meows softly",
            "honks",
            "neighs",
            "moos",
            "quacks",
            "squawks",
            "growls",
            "oinks",
            "bleats",
        ],
        "places": ["on a farm", "in a backyard", "near a pond", "in a barn", "in a field", "by a fence"],
        "sounds": ["wings flapping", "paws scratching", "animals calling to each other", "hooves on dirt"],
    },
    "vehicles": {
        "subjects": [
            "a car",
            "a motorcycle",
            "a large truck",
            "a bus",
            "a train",
            "a helicopter",
            "an airplane",
            "a speedboat",
            "a tractor",
            "a police car",
        ],
        "actions": [
            "accelerates",
            "revs its engine",
            "drives past",
            "idles",
            "honks its horn",
            "passes by quickly",
            "brakes hard",
            "approaches",
            "speeds away",
            "rumbles",
        ],
        "places": [
            "on a busy road",
            "on a highway",
            "at a railway crossing",
            "at an intersection",
            "on a wet street",
            "over the water",
        ],
        "sounds": ["tires screeching", "an engine humming", "a siren wailing", "wind rushing past"],
    },
    "people": {
        "subjects": [
            "a man",
            "a woman",
            "a child",
            "a crowd",
            "two men",
            "a baby",
            "an audience",
            "a group of children",
            "a girl",
            "an old man",
        ],
        "actions": [
            "speaks",
            "laughs",
            "cheers",
            "whispers",
            "coughs",
            "claps",
            "shouts",
            "sings along",
            "cries",
            "talks on the phone",
        ],
        "places": [
            "in a large hall",
            "in a classroom",
            "at a party",
            "in an office",
            "at a stadium",
            "in a small room",
        ],
        "sounds": ["people chattering", "footsteps", "applause", "laughter in the background"],
    },
    "weather": {
        "subjects": [
            "heavy rain",
            "the wind",
            "a thunderstorm",
            "light rain",
            "a strong gust",
            "hail",
            "distant thunder",
            "a storm",
        ],
        "actions": ["falls", "blows", "rumbles", "pours down", "howls", "patters", "crashes", "picks up"],
        "places": [
            "on a tin roof",
            "through the trees",
            "across an open field",
            "against a window",
            "over the hills",
            "on the pavement",
        ],
        "sounds": ["water dripping", "leaves rustling", "thunder rolling", "rain splashing"],
    },
    "household": {
        "subjects": [
            "a door",
            "a vacuum cleaner",
            "a kettle",
            "a microwave",
            "a washing machine",
            "dishes",
            "a faucet",
            "a clock",
            "a blender",
            "a drawer",
        ],
        "actions": [
            "creaks open",
            "whirs",
            "whistles",
            "beeps",
            "spins",
            "clatter",
            "runs",
            "ticks",
            "grinds",
            "slams shut",
        ],
        "places": [
            "in a kitchen",
            "in a bathroom",
            "in a quiet house",
            "in a living room",
            "in an apartment",
            "in a hallway",
        ],
        "sounds": ["water running", "a spoon stirring", "a fan humming", "glass clinking"],
    },
    "music": {
        "subjects": [
            "a guitar",
            "a piano",
            "a violin",
            "a drum kit",
            "a choir",
            "a band",
            "a trumpet",
            "an organ",
            "a flute",
        ],
        "actions": [
            "plays a melody",
            "plays softly",
            "performs a song",
            "strums chords",
            "plays a fast rhythm",
            "sings in harmony",
            "plays a slow tune",
            "echoes",
        ],
        "places": ["in a concert hall", "in a church", "on a stage", "in a studio", "on the street", "at a wedding"],
        "sounds": ["a steady beat", "notes ringing out", "a bass line", "cymbals crashing"],
    },
    "industry": {
        "subjects": [
            "a power drill",
            "a jackhammer",
            "a chainsaw",
            "a saw",
            "a generator",
            "a hammer",
            "heavy machinery",
            "a compressor",
            "a welding torch",
        ],
        "actions": [
            "drills",
            "pounds",
            "buzzes",
            "cuts through wood",
            "hums loudly",
            "bangs",
            "grinds metal",
            "hisses",
            "whines",
        ],
        "places": [
            "at a construction site",
            "in a workshop",
            "in a factory",
            "in a garage",
            "on a building site",
            "in a warehouse",
        ],
        "sounds": ["metal clanging", "sparks crackling", "a motor droning", "debris falling"],
    },
}

# Shared across categories: they make captions overlap, as real captions do.
TIMES = ["in the morning", "at night", "in the afternoon", "for a few seconds", "again and again", "briefly"]
QUALITIES = ["loudly", "quietly", "in the distance", "nearby", "continuously", "intermittently"]
BACKGROUNDS = [
    "while wind blows in the background",
    "with faint background noise",
    "while people talk nearby",
    "as a car passes in the distance",
    "with birds chirping faintly",
    "over a low hum",
]

TEMPLATES = [
    "{subject} {action} {place} {quality}",
    "{subject} {action} {place} while {sound} can be heard",
    "{sound} and {subject} {action} {place} {time}",
    "{subject} {action} {quality} {time} {background}",
    "in this recording {subject} {action} {place} and then {other_subject} {other_action}",
    "{subject} {action} {time} followed by {sound} {place}",
    "you can hear {sound} as {subject} {action} {place} {background}",
    "{subject} {action} then {sound} {quality} {place} {time}",
]

# Share of captions that also mention a sound of another category (makes labels noisy).
CROSSTALK = 0.12


def generate_demo_rows(n_rows: int, seed: int) -> tuple[list[str], list[str]]:
    """`n_rows` synthetic captions and their category labels."""
    if seed < 0:
        raise UserError(f"seed must be 0 or more (got {seed}); numpy's random generator takes no negative seeds.")
    rng = np.random.default_rng(seed)
    categories = list(CATEGORY_SHARES)
    shares = np.array([CATEGORY_SHARES[c] for c in categories])
    labels = rng.choice(categories, size=n_rows, p=shares / shares.sum())
    texts = [_caption(rng, str(label), categories) for label in labels]
    return texts, [str(label) for label in labels]


def _pick(rng: np.random.Generator, options: list[str]) -> str:
    return options[rng.integers(len(options))]


def _caption(rng: np.random.Generator, label: str, categories: list[str]) -> str:
    vocab = VOCABULARY[label]
    fields = {
        "subject": _pick(rng, vocab["subjects"]),
        "action": _pick(rng, vocab["actions"]),
        "place": _pick(rng, vocab["places"]),
        "sound": _pick(rng, vocab["sounds"]),
        "other_subject": _pick(rng, vocab["subjects"]),
        "other_action": _pick(rng, vocab["actions"]),
        "time": _pick(rng, TIMES),
        "quality": _pick(rng, QUALITIES),
        "background": _pick(rng, BACKGROUNDS),
    }
    caption = _pick(rng, TEMPLATES).format(**fields)
    if rng.random() < CROSSTALK:
        other = _pick(rng, [c for c in categories if c != label])
        caption += f" and {_pick(rng, VOCABULARY[other]['sounds'])} in the background"
    # Short templates get a trailing detail so captions are 10-30 words, as captioners write.
    while len(caption.split()) < 10:
        caption += f" {_pick(rng, TIMES)}"
    words = caption.split()[:30]
    return " ".join(words)[0].upper() + " ".join(words)[1:] + "."


def generate_demo(n_train: int = 3000, n_test: int = 1000, seed: int = 0):
    """The demo DatasetDict: general_train and general_test, columns `text` and `label`."""
    import datasets

    train_texts, train_labels = generate_demo_rows(n_train, seed)
    test_texts, test_labels = generate_demo_rows(n_test, seed + 1)
    return datasets.DatasetDict(
        {
            "general_train": datasets.Dataset.from_dict({"text": train_texts, "label": train_labels}),
            "general_test": datasets.Dataset.from_dict({"text": test_texts, "label": test_labels}),
        }
    )
