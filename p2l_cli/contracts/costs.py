"""The costs contract: a YAML, JSON or CSV file that maps model names to the expected cost of
one answer, read by ``route --costs``, ``serve``'s ``router.yaml`` and ``demo``; the same
files map model names to opponent weights for ``route --opponents``.

A model's entry is a number, ``{cost: x}``, or ``{price_per_million_output_tokens: p,
mean_output_tokens: n}`` (cost ``p * n / 1e6``). The file is a mapping of names to entries,
a list of objects with a ``model`` field, or a CSV/TSV table with a ``model`` column. A model
or a key given twice, and a negative or non-finite number, are errors naming the entry.
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

from p2l_cli.errors import UserError

PRICE_KEY = "price_per_million_output_tokens"
TOKENS_KEY = "mean_output_tokens"


class _DuplicateKey(Exception):
    def __init__(self, key: object, line: int | None = None):
        super().__init__(key)
        self.key, self.line = key, line


def _json_object(pairs: list[tuple[str, object]]) -> dict:
    result: dict = {}
    for key, value in pairs:
        if key in result:
            raise _DuplicateKey(key)
        result[key] = value
    return result


def _yaml_loader():
    import yaml

    class UniqueKeyLoader(yaml.SafeLoader):
        """A safe loader that refuses a key given twice in one mapping (PyYAML keeps the
        last silently)."""

        def construct_mapping(self, node, deep=False):
            seen = set()
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    duplicate = key in seen
                except TypeError:  # an unhashable key: the base class reports it
                    break
                if duplicate:
                    raise _DuplicateKey(key, key_node.start_mark.line + 1)
                seen.add(key)
            return super().construct_mapping(node, deep=deep)

    return UniqueKeyLoader


def _load_structured(path: Path, text: str):
    """A JSON or YAML document; a key given twice is the user's error (which value was
    meant is unknown), named with the file."""
    try:
        if path.suffix.lower() == ".json":
            try:
                return json.loads(text, object_pairs_hook=_json_object)
            except json.JSONDecodeError as exc:
                raise UserError(f"{path}: not valid JSON (line {exc.lineno}: {exc.msg})") from None
        import yaml

        try:
            return yaml.load(text, Loader=_yaml_loader())  # a SafeLoader subclass
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f"line {mark.line + 1}: " if mark is not None else ""
            raise UserError(
                f"{path}: not valid YAML ({where}{getattr(exc, 'problem', exc)})"
            ) from None
    except _DuplicateKey as dup:
        where = f"line {dup.line}: " if dup.line else ""
        raise UserError(f"{path}: {where}key {dup.key!r} appears twice") from None


def _entries(path: str | Path) -> list[tuple[str, object, str]]:
    """``(model, spec, where)`` for every model in a YAML/JSON/CSV file mapping model names
    to a number or to an object of fields. ``where`` locates the entry for messages."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: cannot read ({exc})") from None
    if path.suffix.lower() in (".csv", ".tsv"):
        return _csv_entries(path, text)
    data = _load_structured(path, text)
    if isinstance(data, dict):
        items = [(str(name), spec, f"{path}: model {name!r}") for name, spec in data.items()]
    elif isinstance(data, list) and all(isinstance(r, dict) and "model" in r for r in data):
        items = [
            (str(r["model"]), {k: v for k, v in r.items() if k != "model"},
             f"{path}: entry {n} (model {r['model']!r})")
            for n, r in enumerate(data, start=1)
        ]  # fmt: skip
    else:
        raise UserError(
            f"{path}: expected a mapping of model names to values "
            "(or a list of objects with a 'model' field)"
        )
    return _no_duplicates(items, path)


def _csv_entries(path: Path, text: str) -> list[tuple[str, object, str]]:
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    reader = csv.DictReader(io.StringIO(text), delimiter=delimiter)
    if not reader.fieldnames or "model" not in [f.strip() for f in reader.fieldnames]:
        raise UserError(f"{path}: a CSV file needs a 'model' column")
    items = []
    for row_number, row in enumerate(reader, start=2):
        row = {(k or "").strip(): (v or "").strip() for k, v in row.items()}
        name = row.pop("model")
        if not name:
            raise UserError(f"{path}: row {row_number}: empty model name")
        spec = {k: v for k, v in row.items() if k and v != ""}
        items.append((name, spec, f"{path}: row {row_number} (model {name!r})"))
    return _no_duplicates(items, path)


def _no_duplicates(items, path):
    seen = set()
    for name, _, where in items:
        if name in seen:
            raise UserError(f"{where}: the model appears twice in {path}")
        seen.add(name)
    return items


def non_negative_number(value: object, what: str, where: str) -> float:
    if isinstance(value, bool) or value is None:
        raise UserError(f"{where}: {what} {value!r} is not a number")
    try:
        number = float(value)  # numbers, and numeric strings from CSV
    except (TypeError, ValueError):
        raise UserError(f"{where}: {what} {value!r} is not a number") from None
    if not math.isfinite(number):
        raise UserError(f"{where}: {what} {value!r} is not a finite number")
    if number < 0:
        raise UserError(f"{where}: {what} {number:g} is negative")
    return number


def cost_of(spec: object, where: str) -> float:
    """The cost one entry spells; ``where`` names the entry in errors."""
    if not isinstance(spec, dict):
        return non_negative_number(spec, "cost", where)
    if "cost" in spec:
        return non_negative_number(spec["cost"], "cost", where)
    if PRICE_KEY in spec and TOKENS_KEY in spec:
        price = non_negative_number(spec[PRICE_KEY], PRICE_KEY, where)
        return price * non_negative_number(spec[TOKENS_KEY], TOKENS_KEY, where) / 1e6
    raise UserError(f"{where}: expected 'cost', or '{PRICE_KEY}' and '{TOKENS_KEY}'")


def read_costs(path: str | Path) -> dict[str, float]:
    """Expected cost of one answer per model, from a costs file (YAML, JSON or CSV):
    a number, ``{cost: x}``, or ``{price_per_million_output_tokens, mean_output_tokens}``."""
    costs = {name: cost_of(spec, where) for name, spec, where in _entries(path)}
    if not costs:
        raise UserError(f"{path}: no costs in the file")
    return costs


def read_weights(path: str | Path) -> dict[str, float]:
    """Opponent weights per model: a number, or ``{weight: x}`` (CSV: a ``weight`` column)."""
    weights = {}
    for name, spec, where in _entries(path):
        if isinstance(spec, dict):
            if "weight" not in spec:
                raise UserError(f"{where}: expected a number or a 'weight' field")
            spec = spec["weight"]
        weights[name] = non_negative_number(spec, "weight", where)
    return weights
