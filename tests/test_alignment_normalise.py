"""ID normalisation: the documented rule, its errors and reports."""

from __future__ import annotations

import unicodedata

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from accord.alignment import normalise, prepare_ids
from accord.errors import InputDataError


def keys_of(*columns: object, **kwargs: object) -> list[bytes]:
    return prepare_ids(list(columns), **kwargs).keys.to_pylist()  # type: ignore[arg-type]


def test_nfc_strip_and_inner_whitespace() -> None:
    # Arrange: decomposed é, surrounding ASCII and Unicode whitespace, inner spaces.
    ids = ["e\u0301", "  a\t", "\u00a0b\u3000", "x  y", "\x1fz\x1c", "caf\u00e9"]
    # Act
    keys = keys_of(pa.array(ids))
    # Assert: by hand.
    assert keys == ["é".encode(), b"a", b"b", b"x  y", b"z", "café".encode()]


def test_case_is_kept_and_nfkc_is_not_applied() -> None:
    keys = keys_of(pa.array(["ID1", "id1", "\ufb01"]))  # U+FB01 'fi' ligature: NFKC would change it
    assert keys == [b"ID1", b"id1", "\ufb01".encode()]


def test_text_bytes_and_integers_agree() -> None:
    as_text = keys_of(pa.array(["7", "-12", "300"]))
    as_bytes = keys_of(pa.array([b"7", b" -12", b"300 "]))
    as_int = keys_of(pa.array([7, -12, 300], type=pa.int32()))
    as_dictionary = keys_of(pa.array(["7", "-12", "300"]).dictionary_encode())
    as_large = keys_of(pa.array(["7", "-12", "300"], type=pa.large_string()))
    assert as_text == as_bytes == as_int == as_dictionary == [b"7", b"-12", b"300"]
    assert as_large == as_text


def test_numpy_and_list_inputs() -> None:
    assert keys_of(np.array(["a", "b"])) == [b"a", b"b"]
    assert keys_of(["a", "b"]) == [b"a", b"b"]


def test_multi_column_join_is_injective() -> None:
    # ("a", "b c") and ("a b", "c") would collide under a plain space join.
    keys = keys_of(pa.array(["a", "a b", "a\x1fb", "a\\"]), pa.array(["b c", "c", "c", "u"]))
    assert keys == [b"a\x1fb c", b"a b\x1fc", b"a\\ub\x1fc", b"a\\\\\x1fu"]
    assert len(set(keys)) == 4


def test_empty_ids_are_an_error_with_count_and_rows() -> None:
    ids = pa.array(["a", "", "b", "   ", None, "c", "\u3000"])
    with pytest.raises(InputDataError) as caught:
        prepare_ids([ids], names=["patient_id"])
    message = str(caught.value)
    assert "'patient_id'" in message
    assert "4 empty ID(s)" in message
    assert "rows 1, 3, 4, 6" in message


def test_any_empty_part_of_a_multi_column_key_is_empty() -> None:
    with pytest.raises(InputDataError, match=r"1 empty ID\(s\).*rows 1\b"):
        prepare_ids([pa.array(["a", "b"]), pa.array(["x", " "])], names=["first", "last"])


def test_undecodable_bytes_are_an_error_with_rows() -> None:
    # Invalid start byte, a UTF-16 surrogate, an overlong '/', a truncated sequence.
    ids = pa.array([b"ok", b"\xff", b"fine", b"\xed\xa0\x80", b"\xc0\xaf", b"\xe2\x82"])
    with pytest.raises(InputDataError) as caught:
        prepare_ids([ids], names=["id"])
    message = str(caught.value)
    assert "4 undecodable ID(s)" in message
    assert "rows 1, 3, 4, 5" in message
    assert "\\xff" not in message


def test_undecodable_rows_are_found_in_a_long_column() -> None:
    # Arrange: 20k rows, bad bytes at known rows (exercises the bisection).
    values = [f"id{i}".encode() for i in range(20_000)]
    bad_rows = [0, 257, 12_345, 19_999]
    for row in bad_rows:
        values[row] = b"x\x80"
    # Act
    prepared = prepare_ids([pa.array(values)], skip_invalid=True)
    # Assert
    assert prepared.report.undecodable_rows == 4
    assert prepared.report.undecodable_examples == tuple(bad_rows)
    assert len(prepared) == 20_000 - 4
    assert not np.isin(bad_rows, prepared.row_index).any()


def test_skip_invalid_reports_and_drops() -> None:
    prepared = prepare_ids([pa.array([b"a", b"", b"\xff", b"b", None])], skip_invalid=True)
    assert prepared.keys.to_pylist() == [b"a", b"b"]
    assert prepared.row_index.tolist() == [0, 3]
    report = prepared.report
    assert (report.rows, report.kept_rows) == (5, 2)
    assert (report.empty_rows, report.empty_examples) == (2, (1, 4))
    assert (report.undecodable_rows, report.undecodable_examples) == (1, (2,))


def test_examples_are_capped_and_counts_are_complete() -> None:
    prepared = prepare_ids([pa.array([""] * 50 + ["a"])], skip_invalid=True)
    assert prepared.report.empty_rows == 50
    assert prepared.report.empty_examples == (0, 1, 2, 3, 4)


def test_bad_types_and_shapes_are_refused() -> None:
    with pytest.raises(
        InputDataError, match="expected text, bytes or integer IDs, got type double"
    ):
        prepare_ids([pa.array([1.5, 2.5])], names=["score"])
    with pytest.raises(InputDataError, match="expected 2 rows"):
        prepare_ids([pa.array(["a", "b"]), pa.array(["c"])])
    with pytest.raises(InputDataError, match="at least one"):
        prepare_ids([])


def test_chunked_input_and_row_numbers_across_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(normalise, "_CHUNK_ROWS", 3)
    column = pa.chunked_array([pa.array(["a", "b"]), pa.array(["", "d", "e\u0301", " "])])
    prepared = prepare_ids([column], skip_invalid=True)
    assert prepared.keys.to_pylist() == [b"a", b"b", b"d", "é".encode()]
    assert prepared.row_index.tolist() == [0, 1, 3, 4]
    assert prepared.report.empty_examples == (2, 5)


# Characters assigned in this Python's Unicode database: NFC is stable on them across versions.
unicode_text = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=("Cn", "Cs")), max_size=12
)


@settings(max_examples=200, deadline=None)
@given(st.lists(unicode_text, min_size=1, max_size=30))
def test_rule_equals_python_oracle(ids: list[str]) -> None:
    expected = [unicodedata.normalize("NFC", s).strip() for s in ids]
    prepared = prepare_ids([pa.array(ids)], skip_invalid=True)
    kept = [e.encode() for e in expected if e]
    assert prepared.keys.to_pylist() == kept
    assert prepared.row_index.tolist() == [i for i, e in enumerate(expected) if e]


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.text("ab \\\x1f", min_size=1, max_size=4),
            st.text("ab \\\x1f", min_size=1, max_size=4),
        ),
        min_size=1,
        max_size=20,
    )
)
def test_multi_column_keys_equal_iff_parts_equal(pairs: list[tuple[str, str]]) -> None:
    parts = [(a.strip(), b.strip()) for a, b in pairs]
    prepared = prepare_ids(
        [pa.array([a for a, _ in pairs]), pa.array([b for _, b in pairs])], skip_invalid=True
    )
    kept = [p for p in parts if p[0] and p[1]]
    keys = prepared.keys.to_pylist()
    for i in range(len(kept)):
        for j in range(len(kept)):
            assert (keys[i] == keys[j]) == (kept[i] == kept[j])
