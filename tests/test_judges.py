"""Judge plug-ins (loading by dotted path and entry point), the gaming guard, and the programmatic judges."""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from cutalign.config import JudgeSettings
from cutalign.judges.base import InvalidJudgment, Judgment, judge_id_of, normalize, run_judge
from cutalign.judges.guard import GamingGuard, degenerate_reason, template_markers
from cutalign.judges.loader import JudgeLoadError, judge_from_settings, load_judge
from cutalign.judges.programmatic import ArithmeticJudge, CountingJudge

USER_JUDGES = '''
class LengthJudge:
    """A user's judge: positive iff the response has at least `min_words` words. No cutalign imports."""

    def __init__(self, min_words=2):
        self.min_words = min_words

    def judge(self, instruction, response, reference):
        if len(response.split()) >= self.min_words:
            return ("Perfect.", True)
        return (f"The response has fewer than {self.min_words} words.", False)


class NamedJudge(LengthJudge):
    id = "named-v2"


class NotAJudge:
    def score(self, response):
        return 1.0


not_a_class = 3
'''


@pytest.fixture
def user_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A judge module written into the test's tmp dir and put on sys.path, as a user would ship one."""
    name = f"user_judges_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(USER_JUDGES)
    (tmp_path / f"{name}_broken.py").write_text("import a_dependency_that_is_not_installed_xyz\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    return name


# -- loading ------------------------------------------------------------------------------------------------


def test_dotted_path_judge_loads_with_options_and_default_id(user_module: str) -> None:
    judge = load_judge(f"{user_module}:LengthJudge", {"min_words": 3})
    assert judge_id_of(judge) == f"{user_module}:LengthJudge"
    short = run_judge(judge, "Say three words.", "one two", None)
    assert short == Judgment("The response has fewer than 3 words.", False, [], f"{user_module}:LengthJudge")
    assert run_judge(judge, "Say three words.", "one two three", None).positive


def test_judge_id_class_attribute_wins(user_module: str) -> None:
    judge = load_judge(f"{user_module}:NamedJudge")
    assert run_judge(judge, "x", "a b", None).judge_id == "named-v2"


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [
        ("no_such_module_q7:Judge", "cannot find module 'no_such_module_q7'"),
        ("{mod}:MissingJudge", "has no 'MissingJudge'"),
        ("{mod}:NotAJudge", "is not a judge"),
        ("{mod}:not_a_class", "not a class"),
        ("{mod}_broken:Judge", "imports 'a_dependency_that_is_not_installed_xyz'"),
        ("{mod}:", "is not of the form"),
        ("no-such-entry-point", "no judge named 'no-such-entry-point'"),
    ],
)
def test_load_errors_say_what_is_wrong(user_module: str, spec: str, fragment: str) -> None:
    with pytest.raises(JudgeLoadError) as info:
        load_judge(spec.format(mod=user_module))
    assert fragment in str(info.value)


def test_missing_class_error_lists_the_module_classes(user_module: str) -> None:
    with pytest.raises(JudgeLoadError) as info:
        load_judge(f"{user_module}:LenghtJudge")
    assert "LengthJudge" in str(info.value)


def test_unknown_option_is_a_load_error_naming_the_constructor(user_module: str) -> None:
    with pytest.raises(JudgeLoadError) as info:
        load_judge(f"{user_module}:LengthJudge", {"min_wrods": 3})
    assert "min_wrods" in str(info.value) and "min_words" in str(info.value)


def test_entry_point_counting_loads_the_counting_judge() -> None:
    judge = load_judge("counting", {"max_errors": 1})
    assert isinstance(judge, CountingJudge) and judge.max_errors == 1
    with pytest.raises(JudgeLoadError) as info:
        load_judge("countign")
    assert "'counting'" in str(info.value)


def test_loading_one_entry_point_does_not_import_the_llm_judge() -> None:
    code = (
        "import sys\nfrom cutalign.judges.loader import load_judge\nload_judge('counting')\n"
        "print(sorted(m for m in sys.modules if m.startswith('cutalign.judges')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "cutalign.judges.programmatic" in out
    assert "cutalign.judges.llm" not in out


def test_judge_from_settings_guards_by_default() -> None:
    guarded = judge_from_settings(JudgeSettings(judge="counting", options_json='{"max_errors": 2}'))
    assert isinstance(guarded, GamingGuard) and isinstance(guarded.inner, CountingJudge)
    assert guarded.inner.max_errors == 2 and judge_id_of(guarded) == "counting-v1"
    bare = judge_from_settings(JudgeSettings(judge="counting", guard=False))
    assert isinstance(bare, CountingJudge)
    for bad in ("[1, 2]", "{max_errors: 2}"):
        with pytest.raises(JudgeLoadError, match="options_json"):
            judge_from_settings(JudgeSettings(judge="counting", options_json=bad))


# -- normalize ----------------------------------------------------------------------------------------------


def test_normalize_turns_a_tuple_into_a_judgment_and_keeps_an_own_id() -> None:
    assert normalize(("Perfect.", True), judge_id="j") == Judgment("Perfect.", True, [], "j")
    own = Judgment("Wrong.", False, [(0, 1)], "mine")
    assert normalize(own, judge_id="j", response="ab") == own


@pytest.mark.parametrize(
    "result",
    [
        ("ok", "yes"),  # truthy string is not a polarity
        ("", False),  # a negative needs text
        (" \n", False),
        ("text",),
        Judgment("Wrong.", False, [(1, 5)]),  # span beyond the response "abc"
        Judgment("Wrong.", False, [(2, 1)]),
        "Perfect.",
    ],
)
def test_normalize_rejects_what_would_poison_training(result: object) -> None:
    with pytest.raises(InvalidJudgment):
        normalize(result, response="abc")  # type: ignore[arg-type]


# -- the gaming guard ---------------------------------------------------------------------------------------


class AlwaysPerfect:
    """The worst judge: fooled by anything."""

    id = "gullible"

    def judge(self, instruction: str, response: str, reference: dict | None) -> tuple[str, bool]:
        return ("Perfect.", True)


INSTRUCTION = "Count from 3 to 9."


@pytest.mark.parametrize(
    ("response", "start_of_text"),
    [
        ("", "The response is empty;"),
        ("   \n", "The response is empty;"),
        (":", "The response is only punctuation;"),
        ("...!?", "The response is only punctuation;"),
        ("### Response:", "The response repeats the prompt template ('### Response:')"),
        ("3 4 5\n### Instruction:\nCount", "The response repeats the prompt template ('### Instruction:')"),
        ("Q: Count from 3 to 9.\nA: 3 4 5", "The response repeats the prompt template ('A:')"),
        ("  A: 3 4 5 6 7 8 9", "The response repeats the prompt template ('A:')"),
        ("count from 3 to 9", "The response only repeats the instruction;"),
    ],
)
def test_guard_never_lets_a_degenerate_response_be_positive(response: str, start_of_text: str) -> None:
    judgment = GamingGuard(AlwaysPerfect()).judge(INSTRUCTION, response, None)
    assert not judgment.positive
    assert judgment.text.startswith(start_of_text)
    assert judgment.judge_id == "gullible"
    assert normalize(judgment, response=response) == judgment  # spans lie inside the response


def test_guard_blames_the_echoed_marker() -> None:
    response = "3 4 5\n### Response:\n6"
    judgment = GamingGuard(AlwaysPerfect()).judge(INSTRUCTION, response, None)
    assert [response[a:b] for a, b in judgment.error_spans] == ["### Response:"]


def test_guard_passes_real_answers_and_negatives_through() -> None:
    assert GamingGuard(AlwaysPerfect()).judge(INSTRUCTION, "3 4 5 6 7 8 9", None).positive
    counting = GamingGuard(CountingJudge())
    own = counting.judge(INSTRUCTION, "3 4 5", None)
    assert own == CountingJudge().judge(INSTRUCTION, "3 4 5", None)


def test_guard_minimum_length_is_configurable() -> None:
    guard = GamingGuard(AlwaysPerfect(), min_chars=5, min_tokens=3)
    assert guard.judge(INSTRUCTION, "3 4", None).text.startswith("The response is too short (2 characters)")
    assert guard.judge(INSTRUCTION, "3456 7", None).text.startswith("The response is too short (2 words)")
    assert guard.judge(INSTRUCTION, "3456 7 8", None).positive


def test_markers_come_from_the_templates() -> None:
    markers = template_markers()
    for marker in ("### Instruction:", "### Judgment:", "### Response:", "Q:", "J:", "A:"):
        assert marker in markers
    assert template_markers(["<|user|>\n{instruction}\n<|assistant|>\n"]) == ["<|assistant|>", "<|user|>"]
    assert degenerate_reason("Say hi.", "hello there", markers=markers) is None


# -- the counting judge -------------------------------------------------------------------------------------

REF = {"start": 10, "end": 18}


@pytest.mark.parametrize(
    ("response", "text", "blamed"),
    [
        ("10 11 12 13 14 15 16 17 18", "Perfect.", []),
        ("10 11 12 13 14 15 16 17 18\n", "Perfect.", []),
        ("10 11 12 13 14 15 17 18", "After 15 it says 17, but it should say 16.", ["17"]),
        ("10 11 12 13 14 15 18", "After 15 it says 18, but it should say 16.", ["18"]),
        ("10 11 12 13 14 15 15 16 17 18", "After 15 it says 15 again, but it should say 16.", ["15"]),
        ("10 11 12 13 14 15 36 17 18", "After 15 it says 36 instead of 16.", ["36"]),
        ("10 11 12 13 14 15 36 16 17 18", "After 15 it adds 36, but it should say 16.", ["36"]),
        ("9 10 11 12 13 14 15 16 17 18", "It starts at 9, but it should start at 10.", ["9"]),
        ("11 12 13 14 15 16 17 18", "It starts at 11, but it should start at 10.", ["11"]),
        ("10 11 12 13 14", "The count stops at 14, but it should continue to 18.", [""]),
        (
            "10 11 12 13 14 15 16 17 18 19 20",
            "The count goes on past 18 to 20, but it should stop at 18.",
            ["19 20"],
        ),
        ("10 11 12 13 14 15 16 17 18 18", "After 18 it says 18 again, but it should stop at 18.", ["18"]),
        ("", "The response is empty, but it should count from 10 to 18.", [""]),
        ("10 11 x 13 14 15 16 17 18", "After 11 it says 'x' instead of 12.", ["x"]),
    ],
)
def test_counting_judgments_name_the_mistake_and_blame_its_span(
    response: str, text: str, blamed: list[str]
) -> None:
    judgment = CountingJudge().judge("Count from 10 to 18.", response, REF)
    assert judgment.text == text
    assert judgment.positive == (text == "Perfect.")
    assert [response[a:b] for a, b in judgment.error_spans] == blamed
    assert judgment.judge_id == "counting-v1"


def test_repeat_blames_the_second_occurrence() -> None:
    response = "10 11 11 12 13 14 15 16 17 18"
    judgment = CountingJudge().judge("", response, REF)
    assert judgment.error_spans == [(6, 8)]


def test_early_stop_blames_the_end_of_the_response() -> None:
    response = "10 11 12 13 "
    assert CountingJudge().judge("", response, REF).error_spans == [(len(response), len(response))]


def test_several_mistakes_are_all_blamed_and_the_rest_counted() -> None:
    response = "10 11 12 13 15 16 16 17 19 20"
    judgment = CountingJudge(max_errors=2).judge("", response, REF)
    assert judgment.text == (
        "After 13 it says 15, but it should say 14. After 16 it says 16 again, but it should say 17. "
        "It makes 2 more mistakes."
    )
    assert [response[a:b] for a, b in judgment.error_spans] == ["15", "16", "19", "20"]


def test_counting_reads_the_instruction_without_reference_and_rejects_bad_ones() -> None:
    assert CountingJudge().judge("Count from 3 to 7.", "3 4 5 6 7", None).positive
    assert CountingJudge().judge("Count from 3 to 7.", "3 4 5 6 7", {"other": 1}).positive
    with pytest.raises(ValueError, match="reference fields 'start' and 'end'"):
        CountingJudge().judge("Say hello.", "hello", None)
    with pytest.raises(ValueError, match="int start/end"):
        CountingJudge().judge("", "1 2", {"start": "1", "end": 2})
    with pytest.raises(ValueError, match="upwards"):
        CountingJudge().judge("", "1 2", {"start": 5, "end": 2})


# -- the arithmetic judge -----------------------------------------------------------------------------------

ARITH = "Compute 12 + 7 - 5 + 30 from left to right."


@pytest.mark.parametrize(
    ("response", "text", "blamed"),
    [
        ("12 + 7 = 19, 19 - 5 = 14, 14 + 30 = 44", "Perfect.", []),
        ("12 + 7 = 19\n19 - 5 = 14\n14 + 30 = 44.", "Perfect.", []),
        ("12 + 7 = 19, 19 - 5 = 15, 15 + 30 = 45", "In step 2, 19 - 5 is 14, not 15.", ["15"]),
        (
            "12 + 7 = 19, 19 + 5 = 24, 24 + 30 = 54",
            "Step 2 should compute 19 - 5, but it computes 19 + 5.",
            ["19 + 5"],
        ),
        ("12 + 7 = 19, 19 - 5 = 14", "It stops after step 2, but 14 + 30 is still to compute.", [""]),
        (
            "12 + 7 = 19, 19 - 5 = 14, 14 + 30 = 44, 44 + 1 = 45",
            "It goes on with 44 + 1 = 45, but it should stop at 44.",
            ["44 + 1 = 45"],
        ),
        (
            "12 + 7 = 19, 19 - 5 = 14, 14 + 30 = 44. So the answer is 45.",
            "It has text outside the steps ('So the answer is 45'); it should contain only the steps.",
            ["So the answer is 45"],
        ),
        ("44", "The response shows no steps; it should begin with 12 + 7 = 19.", ["44"]),
    ],
)
def test_arithmetic_judgments(response: str, text: str, blamed: list[str]) -> None:
    judgment = ArithmeticJudge().judge(ARITH, response, None)
    assert judgment.text == text
    assert judgment.positive == (text == "Perfect.")
    assert [response[a:b] for a, b in judgment.error_spans] == blamed


def test_arithmetic_reference_expression_and_multiplication() -> None:
    judge = ArithmeticJudge()
    assert judge.judge("Do the sum.", "3 + 4 = 7, 7 * 2 = 14", {"expression": "3 + 4 * 2"}).positive
    assert judge.judge("Do the sum.", "3 + 4 = 7, 7 * 2 = 15", {"expression": "3 + 4 * 2"}).text == (
        "In step 2, 7 * 2 is 14, not 15."
    )
    with pytest.raises(ValueError, match="expression"):
        judge.judge("Say hi.", "hi", None)


def test_builtin_judges_load_by_dotted_path_and_are_deterministic() -> None:
    # the built-in judges load by dotted path like any user's, and judge the same way twice
    judge = load_judge("cutalign.judges.programmatic:ArithmeticJudge")
    first = run_judge(judge, ARITH, "12 + 7 = 19, 19 - 5 = 15", None)
    assert first == run_judge(judge, ARITH, "12 + 7 = 19, 19 - 5 = 15", None)
    assert first.judge_id == "arithmetic-v1"
    assert first.text.startswith("In step 2, 19 - 5 is 14, not 15.")
