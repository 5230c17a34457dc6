import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lmtune.data import FORMATS, read_records
from lmtune.errors import UserError


def write(path, text, encoding="utf-8"):
    path.write_text(text, encoding=encoding, newline="")
    return path


def test_txt_is_one_record_with_edges_stripped(tmp_path):
    f = write(tmp_path / "a.txt", "\n  first line\n\tindented\n\n")
    assert read_records(f) == [{"text": "first line\n\tindented"}]


@pytest.mark.parametrize("sep", ["\n\n", "\\n\\n"])
def test_txt_split_on_blank_lines_accepts_literal_escapes(tmp_path, sep):
    f = write(tmp_path / "a.txt", "one\n  two\n\n\n\nthree\n\n   \n\n")
    assert read_records(f, split_on=sep) == [{"text": "one\n  two"}, {"text": "three"}]


def test_txt_split_on_lines(tmp_path):
    f = write(tmp_path / "a.txt", "a\r\nb\r\n\r\nc")
    assert read_records(f, split_on="\\n") == [{"text": "a"}, {"text": "b"}, {"text": "c"}]


def test_folder_sorted_recursive_with_source_and_empty_files_skipped(tmp_path):
    write(tmp_path / "b.txt", "bee")
    write(tmp_path / "a.txt", "ay\n\nay two")
    write(tmp_path / "empty.txt", "  \n")
    write(tmp_path / "notes.csv", "text\nignored")
    (tmp_path / "sub").mkdir()
    write(tmp_path / "sub" / "c.txt", "sea")
    assert read_records(tmp_path) == [
        {"text": "ay\n\nay two", "source": "a.txt"},
        {"text": "bee", "source": "b.txt"},
        {"text": "sea", "source": "sub/c.txt"},
    ]
    assert [r["text"] for r in read_records(tmp_path, split_on="\n\n")] == ["ay", "ay two", "bee", "sea"]


def test_folder_without_txt_files(tmp_path):
    write(tmp_path / "x.csv", "a\n1")
    with pytest.raises(UserError, match="no .txt files in folder"):
        read_records(tmp_path)


def test_csv_round_trip_with_quotes_commas_newlines_and_bom(tmp_path):
    f = write(tmp_path / "q.csv", '\ufeffauthor,quote\nAda,"Hello, ""world""\nline two"\n\nBob,hi\n')
    assert read_records(f) == [{"author": "Ada", "quote": 'Hello, "world"\nline two'},
                               {"author": "Bob", "quote": "hi"}]


def test_tsv_round_trip(tmp_path):
    f = write(tmp_path / "q.tsv", "a\tb\n1\tx, y\n")
    assert read_records(f) == [{"a": "1", "b": "x, y"}]


@pytest.mark.faults
def test_csv_row_with_wrong_field_count_names_line(tmp_path):
    f = write(tmp_path / "q.csv", 'a,b\n1,"two\nlines"\n3,4,5\n')
    with pytest.raises(UserError, match=r"q\.csv line 4: 3 fields but the header has 2") as e:
        read_records(f)
    assert "quote" in e.value.hint


@pytest.mark.faults
def test_csv_unterminated_quote_names_the_line_where_it_opens(tmp_path):
    f = write(tmp_path / "q.csv", 'a,b\n1,"oops\n2,3\n')
    with pytest.raises(UserError, match=r"q\.csv line 2: malformed CSV"):
        read_records(f)


def test_csv_duplicate_header(tmp_path):
    with pytest.raises(UserError, match="'a' appears twice"):
        read_records(write(tmp_path / "q.csv", "a,a\n1,2\n"))


def test_jsonl_keeps_values_and_skips_blank_lines(tmp_path):
    rows = [{"text": "a\u2028b", "n": 3, "x": None}, "bare string"]
    f = write(tmp_path / "d.jsonl", json.dumps(rows[0], ensure_ascii=False) + "\n\n" + json.dumps(rows[1]) + "\n")
    assert read_records(f) == [rows[0], {"text": "bare string"}]


@pytest.mark.faults
def test_jsonl_invalid_line_named(tmp_path):
    f = write(tmp_path / "d.jsonl", '{"text": "a"}\n\n{"text": oops}\n')
    with pytest.raises(UserError, match=r"d\.jsonl line 3: invalid JSON"):
        read_records(f)


def test_jsonl_non_object_line(tmp_path):
    with pytest.raises(UserError, match=r"line 2: a JSON int"):
        read_records(write(tmp_path / "d.jsonl", '{"text": "a"}\n5\n'))


@pytest.mark.parametrize("content, expected", [
    ([{"text": "a", "n": 1.5}], [{"text": "a", "n": 1.5}]),
    (["x", "y"], [{"text": "x"}, {"text": "y"}]),
    ({"data": [{"q": "x"}], "version": 2}, [{"q": "x"}]),
])
def test_json_shapes(tmp_path, content, expected):
    assert read_records(write(tmp_path / "d.json", json.dumps(content))) == expected


def test_json_that_is_really_jsonl_hints_the_format(tmp_path):
    f = write(tmp_path / "d.json", '{"text": "a"}\n{"text": "b"}\n')
    with pytest.raises(UserError, match=r"d\.json line 2: invalid JSON") as e:
        read_records(f)
    assert "jsonl" in e.value.hint


def test_json_object_with_two_lists_is_ambiguous(tmp_path):
    with pytest.raises(UserError, match="expected a list of records"):
        read_records(write(tmp_path / "d.json", '{"a": [1], "b": [2]}'))


def test_parquet_round_trip(tmp_path):
    f = tmp_path / "d.parquet"
    pq.write_table(pa.table({"text": ["hello", None], "n": [1, 2]}), f)
    assert read_records(f) == [{"text": "hello", "n": 1}, {"text": None, "n": 2}]


def test_parquet_that_is_not_parquet(tmp_path):
    with pytest.raises(UserError, match="not a readable parquet file"):
        read_records(write(tmp_path / "d.parquet", "text\nhello\n"))


@pytest.mark.faults
def test_undecodable_bytes_name_file_and_line_and_hint_encoding(tmp_path):
    f = tmp_path / "latin.txt"
    f.write_bytes("first\nsecond\ncaf\u00e9\n".encode("latin-1"))
    with pytest.raises(UserError, match=r"latin\.txt line 3: bytes that are not valid utf-8") as e:
        read_records(f)
    assert "--encoding latin-1" in e.value.hint
    assert read_records(f, encoding="latin-1") == [{"text": "first\nsecond\ncaf\u00e9"}]


def test_unknown_encoding(tmp_path):
    with pytest.raises(UserError, match="unknown encoding 'utf-9'"):
        read_records(write(tmp_path / "a.txt", "x"), encoding="utf-9")


def test_missing_path(tmp_path):
    with pytest.raises(UserError, match="data file not found: .*nope.txt"):
        read_records(tmp_path / "nope.txt")


@pytest.mark.faults
def test_unknown_extension_lists_formats_and_format_overrides(tmp_path):
    f = write(tmp_path / "notes.log", "hello")
    with pytest.raises(UserError, match="'.log'; formats: " + ", ".join(FORMATS)) as e:
        read_records(f)
    assert "--format" in e.value.hint
    assert read_records(f, fmt="txt") == [{"text": "hello"}]
    with pytest.raises(UserError, match="unknown data format 'xml'"):
        read_records(f, fmt="xml")


@pytest.mark.faults
@pytest.mark.parametrize("name", ["a.txt", "a.csv", "a.jsonl", "a.json"])
def test_empty_or_whitespace_file(tmp_path, name):
    with pytest.raises(UserError, match=f"{name} is empty"):
        read_records(write(tmp_path / name, " \n\t\n"))


def test_split_on_only_for_txt(tmp_path):
    with pytest.raises(UserError, match="--split-on only applies to plain text"):
        read_records(write(tmp_path / "a.csv", "text\nx\n"), split_on="\n")
