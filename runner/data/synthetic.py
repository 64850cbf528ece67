"""Deterministic synthetic datasets, one per answer format, written in the UnifiedQA TSV format."""

from __future__ import annotations

import random
from collections.abc import Callable, Collection
from pathlib import Path

from runner.atomic import write_atomic
from runner.data.example import FORMATS
from runner.data.unifiedqa import split_path
from runner.errors import UserError

# UnifiedQA separates input parts with a space-padded literal backslash-n.
SEP = " \\n "

_SYLLABLES = ("ka", "mi", "lo", "ren", "ta", "vel", "an", "ser", "do", "bri",
              "ma", "tor", "el", "ni", "sa", "gar", "lu", "fen", "ro", "ya")
_TOWN_ENDINGS = ("ford", "ton", "vale", "mere", "wick", "by", "stead", "holm")
# Consonant-initial so "a {job}" never needs "an".
_JOBS = ("baker", "fisher", "carpenter", "teacher", "weaver", "potter",
         "miller", "blacksmith", "doctor", "painter", "gardener", "sailor")
_PETS = ("cat", "dog", "parrot", "goat", "rabbit", "tortoise", "horse", "hen")
_COLOURS = ("red", "black", "white", "grey", "brown", "golden", "orange", "silver")
_FOODS = ("plums", "cheese", "fish soup", "honey cakes", "pears", "bean stew", "rye bread", "apples")
_NUMBERS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")

Fields = dict[str, str]


def _name(rng: random.Random) -> str:
    """Return an invented given name of two or three syllables."""
    return "".join(rng.choice(_SYLLABLES) for _ in range(rng.choice((2, 2, 2, 3))))


def _other(rng: random.Random, pool: Collection[str], *avoid: str) -> str:
    """Pick a value from pool that differs from every value in avoid."""
    return rng.choice([value for value in pool if value not in avoid])


def _person(rng: random.Random) -> Fields:
    """Invent a person, a neighbour, and the facts a paragraph may state about them."""
    pron, poss, obj = rng.choice((("she", "her", "her"), ("he", "his", "him")))
    nb_pron, nb_obj = rng.choice((("she", "her"), ("he", "him")))
    name = _name(rng)
    town = _name(rng) + rng.choice(_TOWN_ENDINGS)
    job, pet = rng.choice(_JOBS), rng.choice(_PETS)
    count = rng.randint(2, 9)
    return {
        "name": name, "pron": pron, "poss": poss, "obj": obj,
        "town": town, "from_town": _other(rng, [_name(rng) + e for e in _TOWN_ENDINGS], town),
        "job": job, "pet": pet, "count": _NUMBERS[count], "count_n": str(count),
        "colour": rng.choice(_COLOURS), "year": str(rng.randint(1820, 1990)),
        "food": rng.choice(_FOODS),
        "nb_name": _other(rng, [_name(rng) for _ in range(4)], name),
        "nb_pron": nb_pron, "nb_obj": nb_obj,
        "nb_job": _other(rng, _JOBS, job), "nb_pet": _other(rng, _PETS, pet),
        "nb_count": _NUMBERS[rng.choice([n for n in range(2, 10) if n != count])],
    }


# ---------------------------------------------------------------- fact paragraphs (yes/no, MC, extractive)

# Sentence variants per fact; "home" always opens the paragraph because it introduces the name.
_SENTENCES: dict[str, tuple[str, ...]] = {
    "home": ("{name} lives in {town} and works as a {job}.",
             "{name} is a {job} in the town of {town}.",
             "{name} works as a {job} in {town}."),
    "pets": ("{pron} keeps {count} {colour} {pet}s.",
             "{pron} owns {count} {pet}s, all of them {colour}."),
    "move": ("{pron} moved to {town} from {from_town} in {year}.",
             "in {year}, {pron} left {from_town} for {town}."),
    "food": ("{poss} favourite food is {food}.",
             "{pron} likes {food} more than anything."),
    "neighbour": ("{poss} neighbour {nb_name} is a {nb_job} with {nb_count} {nb_pet}s.",
                  "next door lives {nb_name}, a {nb_job} who keeps {nb_count} {nb_pet}s."),
}

# Which sentence states each fact a question can ask about.
_FACT_SENTENCE = {"job": "home", "town": "home", "pets": "pets", "colour": "pets", "count": "pets",
                  "year": "move", "from_town": "move", "food": "food", "neighbour": "neighbour",
                  "nb_job": "neighbour", "who": "home"}


def _paragraph(rng: random.Random, p: Fields, needed: str) -> tuple[str, set[str]]:
    """Write 2-4 sentences about p that include the one stating `needed`; return it and its kinds."""
    extra = [kind for kind in ("pets", "move", "food", "neighbour") if kind != needed]
    kinds = [needed] if needed != "home" else []
    # 1-3 sentences besides "home", so 2-4 in all.
    kinds += rng.sample(extra, rng.randint(1, 3) - len(kinds))
    rng.shuffle(kinds)
    # "home" opens (it introduces the name) and "neighbour" closes, so a later "she" or "he"
    # never reads as the neighbour.
    kinds = ["home"] + sorted(kinds, key=lambda kind: kind == "neighbour")
    text = " ".join(rng.choice(_SENTENCES[kind]).format(**p) for kind in kinds)
    return text, set(kinds)


def _yes_no(rng: random.Random, answer: bool) -> tuple[str, str]:
    """Return (input, target) for a boolq-style question whose answer is `answer`."""
    p = _person(rng)
    fact = rng.choice(("job", "town", "pets", "colour", "count", "year", "food", "neighbour"))
    para, kinds = _paragraph(rng, p, _FACT_SENTENCE[fact])

    def pick(true: str, pool: Collection[str], near: str | None = None) -> str:
        # A false value taken from elsewhere in the paragraph forces reading, not word matching.
        if answer:
            return true
        if near is not None and near != true and rng.random() < 0.5:
            return near
        return _other(rng, pool, true)

    near_job = p["nb_job"] if "neighbour" in kinds else None
    near_pet = p["nb_pet"] if "neighbour" in kinds else None
    near_town = p["from_town"] if "move" in kinds else None
    if fact == "job":
        template = rng.choice(("is {name} a {x}?", "does {name} work as a {x}?"))
        x = pick(p["job"], _JOBS, near_job)
    elif fact == "town":
        template = rng.choice(("does {name} live in {x}?", "is {name}'s home in {x}?"))
        x = pick(p["town"], [_name(rng) + e for e in _TOWN_ENDINGS], near_town)
    elif fact == "pets":
        template = rng.choice(("does {name} keep {x}s?", "are there {x}s in {name}'s home?"))
        x = pick(p["pet"], _PETS, near_pet)
    elif fact == "colour":
        template = rng.choice(("are {name}'s {pet}s {x}?", "is the colour of {name}'s {pet}s {x}?"))
        x = pick(p["colour"], _COLOURS)
    elif fact == "count":
        count = int(p["count_n"])
        # 2 <= count <= 9: "more than k" is true for k in [1, count-1], false for k in [count, 9].
        k = rng.randint(1, count - 1) if answer else rng.randint(count, 9)
        template = "does {name} have more than {x} {noun}?"
        x, p = _NUMBERS[k], {**p, "noun": p["pet"] + ("" if k == 1 else "s")}
    elif fact == "year":
        year = int(p["year"])
        y = year + rng.randint(1, 30) if answer else year - rng.randint(1, 30)
        template = rng.choice(("did {name} move to {town} before {x}?",
                               "was {name} living in {town} before {x}?"))
        x = str(y)
    elif fact == "food":
        template = rng.choice(("does {name} like {x} best?", "is {x} {name}'s favourite food?"))
        x = pick(p["food"], _FOODS)
    else:
        template = rng.choice(("is {x} {name}'s neighbour?", "does {x} live next door to {name}?"))
        x = pick(p["nb_name"], [n for n in (_name(rng) for _ in range(4)) if n != p["name"]])
    question = template.format(x=x, **p)
    return question + SEP + para, "yes" if answer else "no"


# (fact, question templates, field holding the answer, field of an in-paragraph distractor, pool)
_MC_QUESTIONS: tuple[tuple[str, tuple[str, ...], str, str | None, Callable | tuple], ...] = (
    ("job", ("what does {name} do for a living?", "what is {name}'s job?"), "job", "nb_job", _JOBS),
    ("town", ("where does {name} live?", "in which town does {name} work?"), "town", "from_town",
     lambda rng: _name(rng) + rng.choice(_TOWN_ENDINGS)),
    ("pets", ("which animals does {name} keep?", "what kind of pets does {name} own?"), "pets",
     "nb_pets", tuple(pet + "s" for pet in _PETS)),
    ("colour", ("what colour are {name}'s {pet}s?",), "colour", None, _COLOURS),
    ("count", ("how many {pet}s does {name} have?", "how many {pet}s does {name} keep?"), "count",
     "nb_count", _NUMBERS[2:]),
    ("year", ("in what year did {name} move to {town}?", "when did {name} arrive in {town}?"), "year",
     None, lambda rng: str(rng.randint(1820, 1990))),
    ("food", ("what does {name} like to eat most?", "what is {name}'s favourite food?"), "food", None,
     _FOODS),
    ("neighbour", ("who lives next door to {name}?", "who is {name}'s neighbour?"), "nb_name", "name",
     _name),
)


# Which sentence mentions each in-paragraph distractor.
_NEAR_SENTENCE = {"nb_job": "neighbour", "nb_pets": "neighbour", "nb_count": "neighbour",
                  "from_town": "move", "name": "home"}


def _distractors(rng: random.Random, right: str, near: str | None, pool: Callable | tuple) -> list[str]:
    """Return three wrong options, starting with the in-paragraph one when there is one."""
    wrong = [near] if near is not None and near != right else []
    while len(wrong) < 3:
        value = pool(rng) if callable(pool) else rng.choice(pool)
        if value != right and value not in wrong:
            wrong.append(value)
    return wrong


def _multiple_choice(rng: random.Random) -> tuple[str, str]:
    """Return (input, target) in RACE layout: question, (A)-(D) options, paragraph."""
    p = _person(rng)
    p["pets"], p["nb_pets"] = p["pet"] + "s", p["nb_pet"] + "s"
    fact, templates, right_key, near_key, pool = rng.choice(_MC_QUESTIONS)
    para, kinds = _paragraph(rng, p, _FACT_SENTENCE[fact])
    right = p[right_key]
    # A distractor is only "near" if the paragraph actually mentions it.
    near_in_text = near_key is not None and _NEAR_SENTENCE[near_key] in kinds
    options = [right] + _distractors(rng, right, p[near_key] if near_in_text else None, pool)
    rng.shuffle(options)
    letters = "ABCD"
    option_text = " ".join(f"({letters[i]}) {text}" for i, text in enumerate(options))
    question = rng.choice(templates).format(**p)
    return question + SEP + option_text + SEP + para, right


_EXTRACTIVE_QUESTIONS: tuple[tuple[str, tuple[str, ...], str], ...] = (
    ("job", ("what does {name} do for a living?", "what is {name}'s job?"), "job"),
    ("town", ("where does {name} live?", "in which town does {name} work?"), "town"),
    ("pets", ("which animals does {name} keep?", "what pets does {name} own?"), "pets"),
    ("colour", ("what colour are {name}'s {pet}s?",), "colour"),
    ("count", ("how many {pet}s does {name} have?",), "count"),
    ("year", ("in what year did {name} move to {town}?", "when did {name} leave {from_town}?"), "year"),
    ("from_town", ("where did {name} live before {town}?", "which town did {name} leave in {year}?"),
     "from_town"),
    ("food", ("what is {name}'s favourite food?",), "food"),
    ("neighbour", ("who is {name}'s neighbour?", "who lives next door to {name}?"), "nb_name"),
    ("nb_job", ("what does {nb_name} do for a living?", "what is the job of {name}'s neighbour?"), "nb_job"),
    ("who", ("who works as a {job} in {town}?", "which person is a {job} in {town}?"), "name"),
)


def _extractive(rng: random.Random) -> tuple[str, str]:
    """Return (input, target) in SQuAD layout; the target is a span copied from the paragraph."""
    p = _person(rng)
    p["pets"] = p["pet"] + "s"
    fact, templates, right_key = rng.choice(_EXTRACTIVE_QUESTIONS)
    para, _ = _paragraph(rng, p, _FACT_SENTENCE[fact])
    return rng.choice(templates).format(**p) + SEP + para, p[right_key]


# ---------------------------------------------------------------- abstractive (NarrativeQA-style)

# (what the summary says, two paraphrased reference answers)
_ROUTINES = (
    ("bakes bread and carries it to the market",
     ("{pron} bakes bread to sell at the market", "bakes bread for the market")),
    ("rows out onto the lake to check {poss} nets",
     ("{pron} checks {poss} fishing nets on the lake", "rows out to check the nets")),
    ("walks {poss} {pet}s along the river",
     ("{pron} takes {poss} {pet}s for a walk by the river", "walks the {pet}s by the river")),
    ("reads old letters aloud to the sailors at the harbour",
     ("{pron} reads letters to the sailors", "reads aloud to the sailors at the harbour")),
    ("sweeps the steps of the town hall",
     ("{pron} cleans the steps of the town hall", "sweeps the town hall steps")),
    ("feeds the ducks at the pond with stale bread",
     ("{pron} gives old bread to the ducks", "feeds the ducks at the pond")),
    ("plays the fiddle in the square for coins",
     ("{pron} plays music in the square for money", "plays the fiddle for coins")),
    ("climbs the hill to watch the sun rise",
     ("{pron} watches the sunrise from the hill", "climbs the hill to see the sunrise")),
)
_CAUSES = (
    ("the river flooded the farms", ("because the river flooded the farms", "the farms were flooded")),
    ("the old mill closed", ("because the mill closed down", "the mill shut")),
    ("the harvest failed two years in a row", ("the harvest failed twice", "because of two bad harvests")),
    ("a fire destroyed {poss} house", ("{poss} house burned down", "because a fire destroyed {poss} home")),
    ("{poss} father fell ill in {town}", ("to look after {poss} sick father", "because {poss} father was ill")),
    ("the mine ran out of silver", ("the silver mine was empty", "because the mine ran out of silver")),
)
# Keyed by the helper's pronoun so "her brother ... thanked her" cannot happen.
_RELATIONS = {"she": ("cousin", "aunt", "sister", "friend", "grandmother"),
              "he": ("cousin", "uncle", "brother", "friend", "grandfather")}
_GIFTS = ("plums", "pears", "apples", "honey cakes", "walnuts", "eggs")
_TASKS = ("repair the roof", "build a small boat", "paint the barn", "plant an apple orchard",
          "dig a new well", "carry the furniture to {town}")
_PLACES = (
    ("asleep in the bakery", ("sleeping in the bakery", "in the bakery, asleep")),
    ("hiding under the old bridge", ("under the bridge", "it was hiding under the old bridge")),
    ("on the roof of the church", ("on the church roof", "up on the roof of the church")),
    ("at the harbour among the boats", ("by the boats at the harbour", "at the harbour")),
    ("in the cellar of the inn", ("in the inn's cellar", "down in the cellar of the inn")),
)


def _abstractive(rng: random.Random) -> tuple[str, tuple[str, str]]:
    """Return (input, two paraphrased references) in NarrativeQA layout: question, summary."""
    p = _person(rng)
    story = rng.randrange(4)
    if story == 0:
        (morning, m_refs), (evening, e_refs) = rng.sample(_ROUTINES, 2)
        summary = ("{name} is a {job} in {town}. every morning {pron} " + morning
                   + ". in the evening {pron} " + evening + ".")
        # Asking about one routine while the other is present makes the time of day matter.
        if rng.random() < 0.5:
            question, refs = rng.choice(("what does {name} do every morning?",
                                         "how does {name} start each day?")), m_refs
        else:
            question, refs = "what does {name} do in the evening?", e_refs
    elif story == 1:
        cause, cause_refs = rng.choice(_CAUSES)
        summary = ("{name} grew up in {from_town}. when " + cause
                   + ", {pron} left and settled in {town}, where {pron} became a {job}.")
        if rng.random() < 0.5:
            question, refs = "why did {name} leave {from_town}?", cause_refs
        else:
            question = "where did {name} go after leaving {from_town}?"
            refs = ("to {town}", "{pron} moved to {town} and became a {job}")
    elif story == 2:
        p["relation"], p["gift"] = rng.choice(_RELATIONS[p["nb_pron"]]), rng.choice(_GIFTS)
        task = rng.choice(_TASKS)
        summary = ("{nb_name} is {poss} {relation}. last winter {nb_name} helped {obj} " + task
                   + ". {name} thanked {nb_obj} with a basket of {gift}.")
        if rng.random() < 0.5:
            question = "who helped {name} " + task + "?"
            refs = ("{poss} {relation} {nb_name}", "{nb_name}, {poss} {relation}")
        else:
            question = "how did {name} thank {nb_name}?"
            refs = ("{pron} gave {nb_obj} a basket of {gift}", "with a basket of {gift}")
    else:
        place, place_refs = rng.choice(_PLACES)
        p["pet_name"] = _name(rng)
        summary = ("{name} had a {colour} {pet} called {pet_name}. one day it ran away, and {pron} "
                   "found it " + place + ".")
        if rng.random() < 0.5:
            question, refs = "where did {name} find {pet_name}?", place_refs
        else:
            question, refs = "what kind of animal is {pet_name}?", ("a {colour} {pet}", "{poss} {pet}")
    first, second = (ref.format(**p) for ref in refs)
    return question.format(**p) + SEP + summary.format(**p), (first, second)


# ---------------------------------------------------------------- files

# Share of abstractive questions written twice with different references, as NarrativeQA does.
_REPEAT_SHARE = 0.3


def _lines(fmt: str, rng: random.Random, n: int, exclude: Collection[str]) -> tuple[list[str], list[str]]:
    """Generate n examples with distinct inputs not in exclude; return (TSV lines, inputs)."""
    if fmt == "yes_no":
        # Exactly balanced labels in a shuffled order: n=60 gives 30 yes and 30 no.
        labels = [True] * (n // 2) + [False] * (n - n // 2)
        rng.shuffle(labels)
    lines: list[str] = []
    inputs: list[str] = []
    seen: set[str] = set()
    attempts = 0
    while len(inputs) < n:
        attempts += 1
        if attempts > 100 * n + 1000:
            raise RuntimeError(f"cannot generate {n} distinct {fmt} examples")
        if fmt == "yes_no":
            source, target = _yes_no(rng, labels[len(inputs)])
            targets = [target]
        elif fmt == "multiple_choice":
            source, target = _multiple_choice(rng)
            targets = [target]
        elif fmt == "extractive":
            source, target = _extractive(rng)
            targets = [target]
        else:
            source, refs = _abstractive(rng)
            targets = list(refs) if rng.random() < _REPEAT_SHARE else [rng.choice(refs)]
        if source in seen or source in exclude:
            continue
        seen.add(source)
        inputs.append(source)
        lines.extend(f"{source}\t{target}\n" for target in targets)
    return lines, inputs


def write_synthetic(out_dir: Path, n_train: int = 400, n_dev: int = 60, seed: int = 0) -> list[Path]:
    """Write out_dir/synthetic_<format>/{train,dev}.tsv for every format; same arguments, same bytes."""
    if n_train < 1 or n_dev < 1:
        raise UserError(f"n_train and n_dev must be at least 1, got {n_train} and {n_dev}")
    paths: list[Path] = []
    for fmt in FORMATS:
        dataset = f"synthetic_{fmt}"
        train_inputs: list[str] = []
        for split, n in (("train", n_train), ("dev", n_dev)):
            # One string-seeded RNG per (format, split): n_dev never changes train, and str seeds
            # hash with sha512, so the output does not depend on PYTHONHASHSEED.
            rng = random.Random(f"{seed}-{fmt}-{split}")
            exclude = set(train_inputs) if split == "dev" else set()
            lines, inputs = _lines(fmt, rng, n, exclude)
            if split == "train":
                train_inputs = inputs
            path = split_path(Path(out_dir), dataset, split)
            write_atomic(path, "".join(lines))
            paths.append(path)
    return paths
