"""A synthetic arena with a planted, prompt-dependent truth: the data behind `p2l simulate`.

The world: ``M`` models, each with a general strength, a skill per prompt category (partly
tied to its general strength, partly a speciality that its name advertises: ``coder``,
``math``, ``writer``, ...), and a gain on hard prompts. A prompt is written from the
templates of its category (``prompt_bank``); an appended phrase may mark it easy or hard.
Its true coefficients are

    theta_m(z) = general_m + skill_m[category(z)] + difficulty(z) * hard_gain_m
                 + multi_turn(z) * turn_gain_m + long(z) * long_gain_m
                 + non_english(z) * language_gain_m

centred over the models (``grk`` instead keeps an absolute level, lower for hard prompts,
because its "both bad" outcome is measured against a fixed reference of strength 0). Both
the category and the difficulty are visible in the text, so a model reading the prompt can
learn theta(z). Votes are drawn from ``p2l_cli.stats.families.outcome_probs`` of the chosen
family: ``bt`` and ``bt-tie`` give decisive votes only, ``rk`` adds ties (tie width by
category), ``grk`` adds ties and "both bad" ties. Pairs are drawn by popularity among the
models released at the battle's time, so pairs are not equally frequent.

Worlds (``world``) set how much each part matters: ``mixed`` (the default: categories,
difficulty and the prompt's form: turns, length, language), ``structure`` (mostly the
prompt's form, weak categories: what sentence embeddings hardly see) and ``flat`` (no prompt
dependence at all: a per-prompt model has nothing to learn and must not lose to the
marginal leaderboard). Votes are drawn with ties by default (``rk``), as in the Arena.

The prompts can also come from a file (``read_prompt_pool``): your own prompts, with their
category when the file has a ``category`` column and their language when it has a
``language`` column. The truth is then planted on what such a file shows: the category's
skills (any category names; those of the bank keep their settings, others get neutral
ones and a speciality of their own), multi-turn, long (``LONG_CHARS``) and not English.
The difficulty is 0 (nothing marks it in a real prompt). Every prompt is used once before
any is used again, and some are held out as the fresh prompts.

Everything is drawn from one ``numpy`` seed, so a seed gives the same files.
"""

from __future__ import annotations

import itertools
import math
import string
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import cache
from pathlib import Path

import numpy as np
import polars as pl
import torch

from p2l_cli.contracts.battles import OUTCOMES
from p2l_cli.data import prompt_bank as bank
from p2l_cli.errors import UserError
from p2l_cli.io import write_json, write_table, write_text
from p2l_cli.stats.families import canonical_family, outcome_probs, rk_raw_eta

START = datetime(2024, 6, 1, tzinfo=timezone.utc).timestamp()
WINNERS = OUTCOMES  # outcome index -> arena winner

GENERAL_SD = 0.6  # spread of general strength (logits)
SKILL_SD = 0.3  # spread of the category skills not explained by strength
# Specialists (coder, math, writer, ...), as in real arenas: a specialist gains this much in
# its categories, plus a share of its gap to the strongest model (domain tuning brings a
# weaker base close to the frontier there), and loses a little everywhere else.
SPECIALITY_BONUS = 1.4
SPECIALITY_CATCH_UP = 0.4
SPECIALITY_COST = 0.3
SPECIALIST_SHARE = 0.4
HARD_GAIN = 0.35  # hard prompts widen the gaps between models by this share
# How much general strength carries over to each category (casual chat compresses gaps).
CATEGORY_SLOPE = {
    "code": 0.3,
    "math": 0.5,
    "creative_writing": 0.0,
    "translation": 0.1,
    "casual_chat": -0.45,
    "sql": 0.25,
    "science": 0.1,
    "business_writing": 0.0,
}
# Ties: the Rao-Kupper tie width, and the grounded RK raw eta, per category.
RK_TIE_WIDTH = {
    "code": 0.35,
    "math": 0.3,
    "creative_writing": 0.7,
    "translation": 0.5,
    "casual_chat": 0.8,
    "sql": 0.35,
    "science": 0.5,
    "business_writing": 0.6,
}
GRK_ETA = {
    "code": -0.5,
    "math": -0.7,
    "creative_writing": 0.2,
    "translation": -0.2,
    "casual_chat": 0.3,
    "sql": -0.5,
    "science": -0.2,
    "business_writing": 0.0,
}
GRK_LEVEL = 1.5  # mean absolute strength in grk: about one vote in ten is "both bad"
GRK_HARD_DROP = 0.5  # hard prompts lower every model's absolute strength by this much

# a category the bank does not know (prompts read from a file): a neutral slope and ties
DEFAULT_SLOPE = 0.1
DEFAULT_TIE_WIDTH = 0.5
DEFAULT_GRK_ETA = 0.0
DIFFICULTY_SHARE = (0.3, 0.4, 0.3)  # easy, plain, hard
LONG_SHARE = 0.15  # prompts with a long pasted context
LONG_CHARS = 2000  # a prompt read from a file is long from this many characters (~500 tokens)
FILE_CATEGORY = "any"  # the one category of prompts read from a file without categories
FRESH_SHARE = 0.2  # at most this share of a file's distinct prompts is held out as fresh
DEFAULT_FAMILY = "rk"
# world -> (scale of category skills and difficulty, sd of the turn / length / language gains)
WORLDS = {"mixed": (1.0, 0.35), "structure": (0.35, 0.7), "flat": (0.0, 0.0)}
DEFAULT_WORLD = "mixed"
FOREIGN_CHAT_SHARE = 0.3  # of casual chat prompts
GREETING_SHARE = 0.15  # of English casual chat prompts
MULTI_TURN_SHARE = 0.15
ANONYMOUS_SHARE = 0.94
LAUNCH_SHARE = 0.6  # models available from the start; the others are released later


@dataclass(frozen=True)
class Prompt:
    turns: list[str]
    difficulty: int  # -1 easy, 0 plain, 1 hard
    language: str | None  # None: not known (a prompt read from a file without languages)
    long: bool = False


@dataclass
class World:
    """The planted truth: models and what makes each strong where."""

    models: list[str]  # sorted
    categories: list[str]
    family: str
    general: np.ndarray  # [M]
    skills: np.ndarray  # [M, C]
    hard_gain: np.ndarray  # [M]
    popularity: np.ndarray  # [M]
    release: np.ndarray  # [M] fraction of the time span
    speciality: list[str | None]
    price: np.ndarray  # [M] dollars per million output tokens
    tokens: np.ndarray  # [M] mean output tokens
    form_gains: np.ndarray | None = None  # [3, M]: multi-turn, long, non-English
    world: str = DEFAULT_WORLD

    def coefs(
        self, category: np.ndarray, difficulty: np.ndarray, form: np.ndarray | None = None
    ) -> np.ndarray:
        """True coefficients ``[N, M]`` for prompts of these categories and difficulties
        and, with ``form [N, 3]``, multi-turn / long / non-English flags."""
        raw = (
            self.general[None, :]
            + self.skills[:, category].T
            + difficulty[:, None] * self.hard_gain[None, :]
        )
        if form is not None and self.form_gains is not None:
            raw = raw + form @ self.form_gains
        centred = raw - raw.mean(axis=1, keepdims=True)
        if self.family == "grk":
            return centred + (GRK_LEVEL - GRK_HARD_DROP * difficulty)[:, None]
        return centred

    def eta(self, category: np.ndarray) -> np.ndarray | None:
        """The raw tie parameter of each prompt (the head's scale), for rk and grk."""
        if self.family == "rk" and self.world == "flat":
            per_category = np.full(len(self.categories), rk_raw_eta(0.5))
        elif self.family == "rk":
            per_category = np.array(
                [rk_raw_eta(RK_TIE_WIDTH.get(c, DEFAULT_TIE_WIDTH)) for c in self.categories]
            )
        elif self.family == "grk":
            per_category = np.array([GRK_ETA.get(c, DEFAULT_GRK_ETA) for c in self.categories])
        else:
            return None
        return per_category[category]

    def costs(self) -> dict[str, dict[str, float]]:
        return {
            name: {
                "price_per_million_output_tokens": float(self.price[i]),
                "mean_output_tokens": int(self.tokens[i]),
            }
            for i, name in enumerate(self.models)
        }

    def leaderboards(self) -> dict[str, dict[str, float]]:
        """Each category's true leaderboard on a plain prompt, best first."""
        boards = {}
        for c, name in enumerate(self.categories):
            theta = self.coefs(np.array([c]), np.zeros(1))[0]
            order = np.argsort(-theta, kind="stable")
            boards[name] = {self.models[i]: round(float(theta[i]), 4) for i in order}
        return boards


@dataclass(frozen=True)
class PromptPool:
    """Prompts read from a file: each one's user turns, category and language (None where
    the file does not say)."""

    turns: list[list[str]]
    category: list[str]
    language: list[str | None]
    source: str


@dataclass
class SimulatedArena:
    battles: pl.DataFrame  # arena conversation schema
    truth: pl.DataFrame  # id, category, difficulty, language, true_coefs (+ true_eta)
    prompts: pl.DataFrame  # fresh prompts, not in battles, with their truth
    costs: dict[str, dict[str, float]]
    world: World
    config: dict = field(default_factory=dict)

    @property
    def models(self) -> list[str]:
        return self.world.models

    @property
    def family(self) -> str:
        return self.world.family


# ------------------------------------------------------------------------------ prompts


@cache
def _fields(template: str) -> tuple[str, ...]:
    return tuple(name for _, name, _, _ in string.Formatter().parse(template) if name)


def _pick(pool, rng: np.random.Generator):
    return pool[int(rng.integers(len(pool)))]


def fill_template(template: str, rng: np.random.Generator) -> str:
    """Fill each ``{slot}``; a slot named ``x2`` differs from slot ``x`` when both appear."""
    values: dict[str, str] = {}
    for name in _fields(template):
        value = str(_pick(bank.SLOTS[name], rng))
        twin = values.get(name[:-1]) if name.endswith("2") else None
        for _ in range(8):
            if value != twin:
                break
            value = str(_pick(bank.SLOTS[name], rng))
        values[name] = value
    return template.format(**values)


def render_prompt(category: str, rng: np.random.Generator, multi_turn: bool = True) -> Prompt:
    """One prompt of ``category``: its user turns, difficulty and language."""
    if category == "casual_chat":
        u = rng.random()
        if u < FOREIGN_CHAT_SHARE:
            language, template = _pick(bank.FOREIGN_CHAT, rng)
            return Prompt([fill_template(template, rng)], 0, language)
        if u < FOREIGN_CHAT_SHARE + GREETING_SHARE * (1 - FOREIGN_CHAT_SHARE):
            return Prompt([_pick(bank.GREETINGS, rng)], 0, "English")
    text = _open(
        _pick(bank.OPENING_PHRASES, rng), fill_template(_pick(bank.TEMPLATES[category], rng), rng)
    )
    difficulty = int(rng.choice([-1, 0, 1], p=DIFFICULTY_SHARE))
    if difficulty:
        text += " " + _pick(_difficulty_phrases(category, difficulty), rng)
    long = bool(rng.random() < LONG_SHARE)
    if long:
        text += "\n\n" + _long_context(category, rng)
    turns = [text]
    if multi_turn and rng.random() < MULTI_TURN_SHARE:
        turns.append(_pick(bank.FOLLOW_UPS[category], rng))
    return Prompt(turns, difficulty, "English", long)


def _long_context(category: str, rng: np.random.Generator) -> str:
    """A pasted block of 8-16 sentences on the prompt's topic (notes, a draft, a log)."""
    lines = []
    for _ in range(int(rng.integers(8, 17))):
        if rng.random() < 0.5:
            lines.append(fill_template(_pick(bank.TEMPLATES[category], rng), rng))
        else:
            lines.append(_answer(category, rng))
    return "Here is the context I have so far:\n" + "\n".join(lines)


def _open(opening: str, text: str) -> str:
    """``"Hey, " + "Write a poem"`` -> ``"Hey, write a poem"`` (but keeps "I" and "SQL")."""
    first = text.split(" ", 1)[0]
    if opening.endswith((", ", ": ")) and first[1:].islower() and first not in ("I", "I'm"):
        text = text[0].lower() + text[1:]
    return opening + text


@cache
def _difficulty_phrases(category: str, difficulty: int) -> tuple[str, ...]:
    if difficulty > 0:
        return bank.HARD_PHRASES + bank.HARD_EXTRA.get(category, ())
    return bank.EASY_PHRASES + bank.EASY_EXTRA.get(category, ())


def _answer(category: str, rng: np.random.Generator) -> str:
    openers = bank.ANSWER_OPENERS.get(category, bank.GENERIC_ANSWER_OPENERS)
    return f"{_pick(openers, rng)} {_pick(bank.ANSWER_CLOSERS, rng)}".strip()


def _conversation(turns: list[str], category: str, rng: np.random.Generator) -> list[dict]:
    messages = []
    for turn in turns:
        messages.append({"role": "user", "content": turn})
        messages.append({"role": "assistant", "content": _answer(category, rng)})
    return messages


# -------------------------------------------------------------------------------- world


def _model_names(strength_rank: np.ndarray, speciality: list[str | None], rng) -> list[str]:
    """Fictional names: a stem, a version, the speciality and a size tag growing with rank."""
    count = len(strength_rank)
    stems = [bank.NAME_STEMS[i % len(bank.NAME_STEMS)] for i in rng.permutation(count)]
    names: list[str] = []
    for i in range(count):
        size = bank.SIZE_TAGS[int(strength_rank[i] * len(bank.SIZE_TAGS) // count)]
        parts = [stems[i], _pick(bank.NAME_VERSIONS, rng)]
        if speciality[i]:
            parts.append(speciality[i])
        parts.append(size)
        name = "-".join(parts)
        suffix = 2
        while name in names:
            name = "-".join(parts[:1] + [f"{parts[1]}.{suffix}"] + parts[2:])
            suffix += 1
        names.append(name)
    return names


def speciality_categories(categories: list[str]) -> dict[str, tuple[str, ...]]:
    """Each speciality a model can have -> the categories it is strong in: the bank's, then
    one per category the bank does not know (named after it)."""
    known = {name for cats in bank.SPECIALITIES.values() for name in cats}
    kinds = {s: cats for s, cats in bank.SPECIALITIES.items() if set(cats) & set(categories)}
    for category in categories:
        if category not in known and category not in bank.CATEGORY_NAMES:
            kinds.setdefault(_name_part(category), (category,))
    return kinds


def _name_part(text: str) -> str:
    """``"Creative Writing!"`` -> ``"creative-writing"``: a piece of a model name."""
    part = "-".join("".join(ch if ch.isalnum() else " " for ch in text.lower()).split())
    return part[:16].strip("-") or "special"


def _specialities(general: np.ndarray, categories: list[str], rng) -> list[str | None]:
    """Which models are specialists, and in what (distinct specialities while they last);
    the strongest model is a generalist."""
    num_models = len(general)
    usable = list(speciality_categories(categories))
    speciality: list[str | None] = [None] * num_models
    if not usable or num_models < 2:
        return speciality
    count = min(num_models - 1, max(1, round(SPECIALIST_SHARE * num_models)))
    others = np.delete(np.arange(num_models), np.argmax(general))
    chosen = rng.choice(others, size=count, replace=False)
    kinds = [usable[k] for k in rng.permutation(len(usable))]
    for n, i in enumerate(chosen):
        speciality[i] = kinds[n % len(kinds)]
    return speciality


def build_world(
    num_models: int,
    categories: list[str],
    family: str,
    rng: np.random.Generator,
    world: str = DEFAULT_WORLD,
) -> World:
    category_scale, form_sd = WORLDS[world]
    general = rng.normal(0.0, GENERAL_SD, num_models)
    general -= general.mean()
    rank = np.argsort(np.argsort(general))
    speciality = _specialities(general, categories, rng)
    slope = np.array([CATEGORY_SLOPE.get(c, DEFAULT_SLOPE) for c in categories])
    strong_in = speciality_categories(categories)
    skills = rng.normal(0.0, SKILL_SD, (num_models, len(categories))) + general[:, None] * slope
    for i, spec in enumerate(speciality):
        if spec:
            strong = np.array([name in strong_in[spec] for name in categories])
            bonus = SPECIALITY_BONUS + SPECIALITY_CATCH_UP * (general.max() - general[i])
            skills[i] += np.where(strong, bonus, -SPECIALITY_COST)
    names = _model_names(rank, speciality, rng)
    popularity = np.exp(0.4 * general + rng.normal(0.0, 0.4, num_models))
    launched = max(2, math.ceil(LAUNCH_SHARE * num_models))
    release = np.zeros(num_models)
    late = rng.permutation(num_models)[launched:]
    release[late] = rng.uniform(0.05, LAUNCH_SHARE, len(late))
    price = np.maximum(
        0.05, np.round(np.exp(0.6 + 1.6 * general + rng.normal(0, 0.35, num_models)), 2)
    )
    tokens = np.round(450 * np.exp(0.25 * general + rng.normal(0, 0.2, num_models)), -1)
    # turns, long context and other languages: skills partly tied to general strength
    form_gains = rng.normal(0.0, form_sd, (3, num_models)) + form_sd * 0.5 * general[None, :]
    skills = skills * category_scale
    order = np.argsort(names)
    return World(
        models=[names[i] for i in order],
        categories=list(categories),
        family=family,
        general=general[order],
        skills=skills[order],
        hard_gain=HARD_GAIN * category_scale * general[order],
        popularity=popularity[order],
        release=release[order],
        speciality=[speciality[i] for i in order],
        price=price[order],
        tokens=tokens[order].astype(int),
        form_gains=form_gains[:, order],
        world=world,
    )


def draw_pairs(world: World, times: np.ndarray, rng: np.random.Generator):
    """Model indices ``(a, b)`` for battles at ``times`` (fractions of the span, sorted):
    among the models released by then, each side drawn by popularity, sides in random order."""
    first = np.empty(len(times), dtype=np.int64)
    second = np.empty(len(times), dtype=np.int64)
    edges = np.unique(np.concatenate([[0.0], world.release[world.release > 0], [np.inf]]))
    for lo, hi in itertools.pairwise(edges):
        rows = np.flatnonzero((times >= lo) & (times < hi))
        if rows.size == 0:
            continue
        available = np.flatnonzero(world.release <= lo)
        weight = world.popularity[available] / world.popularity[available].sum()
        a = rng.choice(available, size=rows.size, p=weight)
        b = rng.choice(available, size=rows.size, p=weight)
        clash = np.flatnonzero(a == b)
        while clash.size:
            b[clash] = rng.choice(available, size=clash.size, p=weight)
            clash = clash[a[clash] == b[clash]]
        first[rows], second[rows] = a, b
    swap = rng.random(len(times)) < 0.5
    return np.where(swap, second, first), np.where(swap, first, second)


def draw_outcomes(
    coefs_a: np.ndarray, coefs_b: np.ndarray, eta: np.ndarray | None, family: str, rng
) -> np.ndarray:
    """Outcome index per vote (0 a wins, 1 b wins, 2 tie, 3 both bad) from the family."""
    probs = outcome_probs(
        torch.from_numpy(coefs_a),
        torch.from_numpy(coefs_b),
        None if eta is None else torch.from_numpy(eta),
        family,
    ).numpy()
    probs = probs / probs.sum(axis=1, keepdims=True)
    last_possible = (probs > 0).cumsum(axis=1).argmax(axis=1)
    u = rng.random(len(probs))
    outcome = (u[:, None] >= probs.cumsum(axis=1)).sum(axis=1)
    return np.minimum(outcome, last_possible)


# ----------------------------------------------------------------------------- simulate


def prompt_form(prompts: list[Prompt]) -> np.ndarray:
    """``[N, 3]`` flags: multi-turn, long context, not English."""
    return np.array(
        [[len(p.turns) > 1, p.long, not_english(p.language)] for p in prompts], dtype=np.float64
    ).reshape(len(prompts), 3)


def not_english(language: str | None) -> bool:
    """The planted "not English" flag of a prompt in ``language`` (None: not known, counted
    as English)."""
    return language is not None and language.lower() != "english"


def _check(num_battles: int, num_models: int, num_prompts: int, days: float):
    if num_battles < 1:
        raise UserError(f"--battles {num_battles}: must be at least 1")
    if num_models < 2:
        raise UserError(f"--models {num_models}: need at least 2 models")
    if num_prompts < 0:
        raise UserError(f"--prompts {num_prompts}: must be 0 or more")
    if not days > 0:
        raise UserError(f"--days {days}: must be positive")


def _check_categories(categories: list[str]) -> None:
    unknown = [c for c in categories if c not in bank.CATEGORY_NAMES]
    if unknown or not categories:
        raise UserError(
            f"--categories: unknown {', '.join(unknown) or '(none given)'}; choose from "
            f"{', '.join(bank.CATEGORY_NAMES)}"
        )


def simulate_arena(
    num_battles: int = 6000,
    num_models: int = 10,
    family: str = DEFAULT_FAMILY,
    seed: int = 0,
    categories: list[str] | None = None,
    num_prompts: int = 300,
    days: float = 60.0,
    world: str = DEFAULT_WORLD,
    pool: PromptPool | None = None,
) -> SimulatedArena:
    """Simulate an arena: battles in the Arena conversation schema, their truth, fresh
    prompts with their truth, and the models' costs. Same arguments, same frames. With a
    ``pool`` the prompts are those of the file it was read from, their categories its own
    (``categories`` must then be None)."""
    try:
        family = canonical_family(family)
    except ValueError as exc:
        raise UserError(f"--family: {exc}") from None
    if pool is not None and categories:
        raise UserError("--categories and --prompts-from: the categories of a prompts file "
                        "are its own (its category column); give one")  # fmt: skip
    if pool is not None:
        names, row_category = np.unique(pool.category, return_inverse=True)
        categories = [str(name) for name in names]
    else:
        categories = list(dict.fromkeys(categories or bank.CATEGORY_NAMES))
        _check_categories(categories)
    _check(num_battles, num_models, num_prompts, days)
    if world not in WORLDS:
        raise UserError(f"--world {world}: expected one of {', '.join(WORLDS)}")
    streams = [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(6)]
    world_rng, time_rng, prompt_rng, answer_rng, vote_rng, fresh_rng = streams

    world_name = world
    world = build_world(num_models, categories, family, world_rng, world_name)
    times = np.sort(time_rng.uniform(0.0, 1.0, num_battles))
    model_a, model_b = draw_pairs(world, times, time_rng)
    if pool is None:
        share = np.array([bank.CATEGORY_SHARE[c] for c in categories])
        category = time_rng.choice(len(categories), size=num_battles, p=share / share.sum())
    anony = time_rng.random(num_battles) < ANONYMOUS_SHARE
    ids = [time_rng.bytes(16).hex() for _ in range(num_battles)]
    if pool is None:
        prompts = [render_prompt(categories[c], prompt_rng) for c in category]
        fresh_pool = None
    else:
        fresh_pool, drawn = _split_pool(pool, num_prompts, num_battles, prompt_rng)
        prompts = [_pool_prompt(pool, i) for i in drawn]
        category = row_category[drawn]
    difficulty = np.array([p.difficulty for p in prompts], dtype=np.float64)
    form = prompt_form(prompts)
    coefs = world.coefs(category, difficulty, form)
    eta = world.eta(category)
    rows = np.arange(num_battles)
    outcome = draw_outcomes(coefs[rows, model_a], coefs[rows, model_b], eta, family, vote_rng)

    names = np.array(world.models, dtype=object)
    battles = pl.DataFrame(
        {
            "question_id": ids,
            "model_a": names[model_a].tolist(),
            "model_b": names[model_b].tolist(),
            "winner": [WINNERS[o] for o in outcome],
            "conversation_a": [
                _conversation(p.turns, categories[c], answer_rng) for p, c in zip(prompts, category)
            ],
            "conversation_b": [
                _conversation(p.turns, categories[c], answer_rng) for p, c in zip(prompts, category)
            ],
            "turn": [len(p.turns) for p in prompts],
            "anony": anony.tolist(),
            "language": [p.language for p in prompts],
            "tstamp": (START + times * days * 86400.0).round(3).tolist(),
            "category": [categories[c] for c in category],
        },
        schema_overrides={"turn": pl.Int64, "tstamp": pl.Float64, "language": pl.String},
    )
    truth = _truth_frame(ids, category, difficulty, prompts, coefs, eta, categories)
    if fresh_pool is None:
        seen = {p.turns[0] for p in prompts}
        fresh = _fresh_prompts(world, num_prompts, seen, fresh_rng)
    else:
        fresh = _fresh_from_pool(world, pool, fresh_pool, row_category[fresh_pool])
    config = {
        "seed": seed,
        "world": world_name,
        "family": family,
        "battles": num_battles,
        "models": num_models,
        "categories": categories,
        "prompts": num_prompts,
        "days": days,
        "start": datetime.fromtimestamp(START, timezone.utc).isoformat(),
    }
    if pool is not None:
        config["prompts_from"] = pool.source
        config["prompts"] = len(fresh)
        config["battle_prompts"] = len({tuple(p.turns) for p in prompts})
    return SimulatedArena(battles, truth, fresh, world.costs(), world, config)


def read_prompt_pool(path: str | Path, prompt_column: str | None = None) -> PromptPool:
    """The prompts of a file (any table format the other commands read; the prompt column
    ``prompt_column``, else found as `p2l predict` finds it), with its ``category`` and
    ``language`` columns where it has them. A row without a usable prompt stops with its
    row number."""
    from p2l_cli.io import read_table
    from p2l_cli.predict import find_prompt_column, frame_prompts

    name = str(path)
    frame = read_table(path)
    column = find_prompt_column(frame.columns, name, prompt_column)
    turns, bad = frame_prompts(frame, column)
    if bad:
        raise UserError(f"{name}: row {bad[0][1]}: {bad[0][2]}")

    def labels(column: str, blank: str | None) -> list[str | None]:
        if column not in frame.columns:
            return [blank] * frame.height
        values = frame[column].cast(pl.String, strict=False).to_list()
        return [value.strip() if value and value.strip() else blank for value in values]

    distinct = len({tuple(t) for t in turns})
    if distinct < 2:
        raise UserError(f"{name}: needs at least 2 distinct prompts, found {distinct}")
    return PromptPool(turns, labels("category", FILE_CATEGORY), labels("language", None), name)


def _pool_prompt(pool: PromptPool, index: int) -> Prompt:
    turns = pool.turns[index]
    language = pool.language[index]
    long = sum(len(turn) for turn in turns) >= LONG_CHARS
    return Prompt(list(turns), 0, language, long)


def _split_pool(
    pool: PromptPool, num_fresh: int, num_battles: int, rng: np.random.Generator
) -> tuple[list[int], np.ndarray]:
    """Row indices of the fresh prompts (distinct prompts held out of every battle: up to
    ``num_fresh``, at most ``FRESH_SHARE`` of them), and the row of each battle's prompt:
    every other row once, in random order, before any row is used again."""
    first: dict[tuple[str, ...], int] = {}
    for index, turns in enumerate(pool.turns):
        first.setdefault(tuple(turns), index)
    distinct = np.array(list(first.values()), dtype=np.int64)
    held = min(num_fresh, int(FRESH_SHARE * len(distinct)))
    fresh = set(rng.choice(distinct, size=held, replace=False).tolist()) if held else set()
    keys = {tuple(pool.turns[i]) for i in fresh}
    rows = np.array([i for i, t in enumerate(pool.turns) if tuple(t) not in keys], np.int64)
    rounds = -(-num_battles // len(rows))
    drawn = np.concatenate([rng.permutation(rows) for _ in range(rounds)])[:num_battles]
    return sorted(fresh), drawn


def _fresh_from_pool(
    world: World, pool: PromptPool, rows: list[int], category: np.ndarray
) -> pl.DataFrame:
    """The held-out ``rows`` of a file (their ``category`` indices) with their truth;
    ``prompt`` is the list of user turns."""
    prompts = [_pool_prompt(pool, i) for i in rows]
    return _prompts_frame(world, category, prompts, [p.turns for p in prompts],
                          pl.List(pl.String))  # fmt: skip


def _truth_frame(ids, category, difficulty, prompts, coefs, eta, categories) -> pl.DataFrame:
    columns = {
        "id": ids,
        "category": [categories[c] for c in category],
        "difficulty": difficulty.astype(np.int64).tolist(),
        "language": [p.language for p in prompts],
        "turns": [len(p.turns) for p in prompts],
        "long": [p.long for p in prompts],
        "true_coefs": coefs.tolist(),
    }
    if eta is not None:
        columns["true_eta"] = eta.tolist()
    schema = {"true_coefs": pl.List(pl.Float64), "language": pl.String}
    return pl.DataFrame(columns, schema_overrides=schema)


def _fresh_prompts(world: World, count: int, seen: set[str], rng) -> pl.DataFrame:
    """``count`` single-turn prompts whose text is in no battle, with their truth."""
    share = np.array([bank.CATEGORY_SHARE[c] for c in world.categories])
    chosen: list[tuple[int, Prompt]] = []
    texts = set(seen)
    attempts = 0
    while len(chosen) < count and attempts < 50 * count + 100:
        attempts += 1
        c = int(rng.choice(len(world.categories), p=share / share.sum()))
        prompt = render_prompt(world.categories[c], rng, multi_turn=False)
        if prompt.turns[0] not in texts:
            texts.add(prompt.turns[0])
            chosen.append((c, prompt))
    prompts = [p for _, p in chosen]
    category = np.array([c for c, _ in chosen], dtype=np.int64)
    return _prompts_frame(world, category, prompts, [p.turns[0] for p in prompts], pl.String)


def _prompts_frame(world: World, category: np.ndarray, prompts: list[Prompt], values: list,
                   dtype: pl.DataType) -> pl.DataFrame:  # fmt: skip
    """Fresh prompts with their truth; ``values`` (of ``dtype``) is the ``prompt`` column."""
    difficulty = np.array([p.difficulty for p in prompts], dtype=np.float64)
    coefs = (
        world.coefs(category, difficulty, prompt_form(prompts))
        if prompts
        else np.zeros((0, len(world.models)))
    )
    columns = {
        "id": [f"prompt-{i:05d}" for i in range(len(prompts))],
        "prompt": values,
        "category": [world.categories[c] for c in category],
        "difficulty": difficulty.astype(np.int64).tolist(),
        "language": [p.language for p in prompts],
        "long": [p.long for p in prompts],
        "true_coefs": coefs.tolist(),
    }
    eta = world.eta(category)
    if eta is not None:
        columns["true_eta"] = eta.tolist()
    schema = {"prompt": dtype, "true_coefs": pl.List(pl.Float64), "difficulty": pl.Int64,
              "language": pl.String}  # fmt: skip
    return pl.DataFrame(columns, schema_overrides=schema)


# ------------------------------------------------------------------------------ writing

OUTPUTS = ("battles.parquet", "truth.parquet", "prompts.jsonl", "costs.yaml", "simulation.json")


def costs_yaml(costs: dict[str, dict[str, float]]) -> str:
    lines = [
        "# Simulated per-answer costs: cost = price_per_million_output_tokens * mean_output_tokens / 1e6",
    ]
    for name, spec in costs.items():
        lines.append(f"{name}:")
        lines.append(
            f"  price_per_million_output_tokens: {spec['price_per_million_output_tokens']}"
        )
        lines.append(f"  mean_output_tokens: {spec['mean_output_tokens']}")
    return "\n".join(lines) + "\n"


def write_arena(arena: SimulatedArena, out_dir: str | Path) -> list[Path]:
    """Write the simulation's files into ``out_dir`` (each atomically); returns their paths."""
    root = Path(out_dir)
    if root.exists() and not root.is_dir():
        raise UserError(f"{out_dir}: exists and is not a folder")
    root.mkdir(parents=True, exist_ok=True)
    meta = {"models": arena.models, "loss": arena.family, "family": arena.family}
    write_table(arena.battles, root / "battles.parquet")
    write_table(arena.truth, root / "truth.parquet", meta=meta)
    write_table(arena.prompts, root / "prompts.jsonl")
    write_text(root / "costs.yaml", costs_yaml(arena.costs))
    summary = {
        **arena.config,
        "model_list": arena.models,
        "general_strength": {
            m: round(float(g), 4) for m, g in zip(arena.models, arena.world.general)
        },
        "speciality": dict(zip(arena.models, arena.world.speciality)),
        "category_leaderboards": arena.world.leaderboards(),
        "winners": dict(arena.battles["winner"].value_counts().sort("winner").iter_rows()),
    }
    write_json(root / "simulation.json", summary)
    return [root / name for name in OUTPUTS]


def model_summary(arena: SimulatedArena) -> list[dict]:
    """Per model: battles, share won, cost of an answer, and the categories it tops."""
    battles = arena.battles
    boards = arena.world.leaderboards()
    rows = []
    for i, name in enumerate(arena.models):
        as_a = battles.filter(pl.col("model_a") == name)
        as_b = battles.filter(pl.col("model_b") == name)
        count = as_a.height + as_b.height
        won = (as_a["winner"] == "model_a").sum() + (as_b["winner"] == "model_b").sum()
        rows.append({
            "model": name,
            "battles": count,
            "won": won / count if count else None,
            "cost": arena.world.price[i] * arena.world.tokens[i] / 1e6,
            "best_categories": [c for c, board in boards.items() if next(iter(board)) == name],
        })
    return rows
