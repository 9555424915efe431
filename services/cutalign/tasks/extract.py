"""Structured extraction into JSON: "Extract as JSON: Tano is 34 and lives in Vekora." ->
``{"name":"Tano","age":34,"city":"Vekora"}``.

The judge parses the response as JSON and checks the fields in order. It names the first problem: not JSON
("It is not valid JSON: ..." blaming from the failing position on), a missing or unexpected field, or a
wrong value ('The "age" should be 34, not 43.' blaming the value as written).
"""

from __future__ import annotations

import json
import random
from collections.abc import Mapping
from typing import Any

from cutalign.judges.base import PERFECT, Judgment
from cutalign.tasks.family import Family
from cutalign.tasks.words import word

FIELDS = ("name", "age", "city")


NAMES = tuple(word(random.Random(f"name-{i}"), (1, 2)).title() for i in range(24))
CITIES = tuple(word(random.Random(f"city-{i}"), (2, 2)).title() for i in range(24))


def make(rng: random.Random) -> dict[str, Any]:
    name, city, age = rng.choice(NAMES), rng.choice(CITIES), rng.randint(18, 90)
    instruction = f"Extract as JSON: {name} is {age} and lives in {city}."
    return {
        "id": f"extract-{name}-{age}-{city}",
        "instruction": instruction,
        "name": name,
        "age": age,
        "city": city,
    }


def answer(row: Mapping[str, Any]) -> str:
    return json.dumps({k: row[k] for k in FIELDS}, separators=(",", ":"))


class FieldsJudge:
    """Judges the JSON object against ``reference``'s fields; ``spans=False`` drops the error spans."""

    id = "extract-json-v1"

    def __init__(self, spans: bool = True) -> None:
        self.spans = spans

    def judge(self, instruction: str, response: str, reference: dict[str, Any] | None) -> Judgment:
        if not reference or any(k not in reference for k in FIELDS):
            raise ValueError(f"an extraction is judged against reference fields {FIELDS}")
        expected = {k: reference[k] for k in FIELDS}
        text, span = self._problem(response, expected)
        if not text:
            return Judgment(PERFECT, True, [], self.id)
        return Judgment(text, False, [span] if self.spans else [], self.id, answer(expected))

    def _problem(self, response: str, expected: dict[str, Any]) -> tuple[str, tuple[int, int]]:
        end = (len(response), len(response))
        try:
            got = json.loads(response)
        except json.JSONDecodeError as e:
            text = f"It is not valid JSON from character {e.pos + 1} on ({e.msg.lower()})."
            return text, ((e.pos, len(response)) if e.pos < len(response) else end)
        if not isinstance(got, dict):
            return "It should be a JSON object with name, age and city.", (0, len(response))
        for key in FIELDS:
            if key not in got:
                return f"It has no {key!r} field; {key} is {expected[key]!r}.", end
            if got[key] != expected[key]:
                written = json.dumps(got[key])
                start = response.find(written, response.find(f'"{key}"'))
                span = (start, start + len(written)) if start >= 0 else (0, len(response))
                return f"The {key!r} should be {json.dumps(expected[key])}, not {written}.", span
        if extra := [k for k in got if k not in FIELDS]:
            start = response.find(f'"{extra[0]}"')
            return f"It has an unexpected field {extra[0]!r}.", (max(start, 0), len(response) - 1)
        if list(got) != list(FIELDS):
            return "The fields should come in the order name, age, city.", (0, len(response))
        return "", end


FAMILY = Family(
    "extract", make, "cutalign.tasks.extract:FieldsJudge", answer, max_new_tokens=48, base_examples=4000
)
