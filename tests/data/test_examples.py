import math

import pytest

from lmtune.data import Example, build_examples, build_examples_with_stats, split_examples
from lmtune.errors import UserError

QUOTES = [{"author": "Ada", "quote": "Hi", "year": 1843}, {"author": "Bob", "quote": "Yo", "year": 1900}]


def test_default_uses_text_field():
    records = [{"text": "a", "source": "x.txt"}, {"text": "b", "source": "y.txt"}]
    assert build_examples(records, source="d") == [Example("", "a"), Example("", "b")]


def test_default_uses_the_only_field():
    assert build_examples([{"body": "a"}, {"body": "b"}], source="d") == [Example("", "a"), Example("", "b")]


def test_default_with_several_fields_asks_which():
    with pytest.raises(UserError, match="d.csv has fields author, quote, year; which one") as e:
        build_examples(QUOTES, source="d.csv")
    assert "--column NAME or --template" in e.value.hint


def test_default_when_only_some_records_have_text():
    with pytest.raises(UserError, match="1 of 2 records in d.jsonl have no 'text' field") as e:
        build_examples([{"text": "a"}, {"body": "b"}], source="d.jsonl")
    assert "--column text" in e.value.hint


def test_column_picks_the_field_and_converts_to_str():
    assert build_examples(QUOTES, source="d", column="year") == [Example("", "1843"), Example("", "1900")]


@pytest.mark.faults
def test_unknown_column_lists_fields():
    with pytest.raises(UserError, match="'Quote', which d.csv does not have; available fields: author, quote, year"):
        build_examples(QUOTES, source="d.csv", column="Quote")


def test_template_renders_fields_and_literal_braces():
    out = build_examples(QUOTES, source="d", template='{{{year}}} Quote by {author}: "{quote}"')
    assert out == [Example("", '{1843} Quote by Ada: "Hi"'), Example("", '{1900} Quote by Bob: "Yo"')]


@pytest.mark.faults
def test_template_with_unknown_field_names_field_file_and_sorted_fields():
    with pytest.raises(UserError) as e:
        build_examples(QUOTES, source="quotes.csv", template="{author}: {text}")
    assert "'text'" in str(e.value) and "quotes.csv" in str(e.value)
    assert "available fields: author, quote, year" in str(e.value)


def test_template_field_names_may_contain_spaces_and_dots_when_they_exist():
    records = [{"first name": "Ada", "meta.x": 1}]
    assert build_examples(records, source="d", template="{first name}/{meta.x}") == [Example("", "Ada/1")]


@pytest.mark.faults
@pytest.mark.parametrize("template", ["{author.__class__}", "{author[0]}", "{}", "{0}", "{year:.2f}", "{author!r}"])
def test_template_rejects_access_positional_and_format_specs(template):
    with pytest.raises(UserError, match="template"):
        build_examples(QUOTES, source="d", template=template)


def test_malformed_template_hints_double_braces():
    with pytest.raises(UserError, match="malformed") as e:
        build_examples(QUOTES, source="d", template="{author")
    assert "{{" in e.value.hint


def test_prompt_and_completion_templates():
    out = build_examples(QUOTES, source="d", prompt_template="Quote by {author}:", completion_template=" {quote}")
    assert out == [Example("Quote by Ada:", " Hi"), Example("Quote by Bob:", " Yo")]


@pytest.mark.parametrize("kwargs, message", [
    ({"prompt_template": "{author}"}, "needs its partner"),
    ({"completion_template": "{quote}"}, "needs its partner"),
    ({"column": "quote", "template": "{quote}"}, "not --column and --template"),
    ({"template": "{quote}", "prompt_template": "{author}", "completion_template": "{quote}"}, "choose one way"),
])
def test_text_options_are_exclusive(kwargs, message):
    with pytest.raises(UserError, match=message):
        build_examples(QUOTES, source="d", **kwargs)


def test_missing_values_and_empty_text_are_dropped_and_counted():
    records = [
        {"author": "Ada", "quote": "Hi"},
        {"author": None, "quote": "No author"},
        {"author": "Cy", "quote": math.nan},
        {"quote": "absent author"},
        {"author": "Di", "quote": "  \n"},
        {"author": "Ed", "quote": 7},
    ]
    examples, stats = build_examples_with_stats(
        records, source="d", prompt_template="{author}:", completion_template="{quote}")
    assert examples == [Example("Ada:", "Hi"), Example("Ed:", "7")]
    assert stats == {"records": 6, "dropped_empty": 1, "dropped_missing": 3}


@pytest.mark.faults
def test_all_empty_is_an_error_naming_the_file():
    with pytest.raises(UserError, match=r"no examples in d.jsonl after templating \(2 records"):
        build_examples([{"text": " "}, {"text": ""}], source="d.jsonl")


def exs(n):
    return [Example("", str(i)) for i in range(n)]


def test_split_is_deterministic_ordered_and_complete():
    train, val = split_examples(exs(100), 0.1, seed=3)
    assert (train, val) == split_examples(exs(100), 0.1, seed=3)
    assert len(val) == 10 and len(train) == 90
    assert sorted(train + val, key=lambda e: int(e.completion)) == exs(100)
    for part in (train, val):
        assert [int(e.completion) for e in part] == sorted(int(e.completion) for e in part)
    assert split_examples(exs(100), 0.1, seed=4)[1] != val


@pytest.mark.parametrize("n, fraction", [(2, 0.01), (2, 0.99), (3, 0.9), (50, 0.001)])
def test_split_keeps_both_parts_non_empty(n, fraction):
    train, val = split_examples(exs(n), fraction, seed=0)
    assert len(train) >= 1 and len(val) >= 1 and len(train) + len(val) == n


def test_split_zero_fraction_keeps_everything():
    assert split_examples(exs(5), 0, seed=0) == (exs(5), [])


@pytest.mark.parametrize("fraction", [-0.1, 1, 1.5, "0.1"])
def test_split_rejects_bad_fraction(fraction):
    with pytest.raises(UserError, match="val_fraction must be"):
        split_examples(exs(5), fraction, seed=0)
