"""Keyed digests (known answers, an independent CBC oracle), duplicates, the wire form."""

from __future__ import annotations

import hashlib
import hmac

import numpy as np
import pyarrow as pa
import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from hypothesis import given, settings
from hypothesis import strategies as st

from accord.alignment import (
    DIGEST_BYTES,
    DuplicatePolicy,
    check_words,
    digest_ids,
    digests_from_bytes,
    digests_to_bytes,
    keyed_digests,
    prepare_ids,
)
from accord.alignment import digests as digests_module
from accord.alignment._sorting import is_canonical, sort_order
from accord.errors import ConfigurationError, InputDataError, ProtocolError

KEY = bytes(range(32))


def oracle_digest(value: bytes, key: bytes, columns: int = 1) -> bytes:
    """The documented construction, computed per ID with AES-CBC (zero IV): last block."""
    label = b"accord/alignment/digest/v1/columns=%d" % columns
    aes_key = hmac.new(key, label, hashlib.sha256).digest()
    message = len(value).to_bytes(8, "little") + value
    message += b"\0" * (-len(message) % 16)
    encryptor = Cipher(algorithms.AES(aes_key), modes.CBC(b"\0" * 16)).encryptor()
    return encryptor.update(message)[-16:]


def as_bytes(digests: np.ndarray) -> list[bytes]:
    return [row.tobytes() for row in np.ascontiguousarray(digests)]


def oracle_check_word(value: bytes, seed: int) -> int:
    """The documented check word, computed per ID with Python integers."""
    mask = (1 << 64) - 1
    word = (seed ^ (len(value) * 0x9E3779B97F4A7C15)) & mask
    for start in range(0, len(value), 8):
        word ^= int.from_bytes(value[start : start + 8].ljust(8, b"\0"), "little")
        word = (word * 0xBF58476D1CE4E5B9) & mask
        word ^= word >> 31
    word = (word * 0x94D049BB133111EB) & mask
    return word ^ (word >> 29)


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.binary(max_size=50), max_size=30),
    st.integers(0, 2**64 - 1),
    st.integers(0, 40),
    st.integers(0, 30),
)
def test_check_words_equal_the_per_id_oracle_however_chunked(
    values: list[bytes], seed: int, width: int, cut: int
) -> None:
    # Variable lengths, one length (the matrix path), and both split across chunks.
    for batch in (values, [value.ljust(width, b"x")[:width] for value in values]):
        array = pa.array(batch, type=pa.binary())
        chunked = pa.chunked_array([array.slice(0, cut), array.slice(cut)], type=pa.binary())
        expected = [oracle_check_word(value, seed) for value in batch]
        assert check_words(array, seed).tolist() == expected
        assert check_words(chunked, seed).tolist() == expected


def test_check_words_tell_one_word_changes_apart_and_depend_on_the_seed() -> None:
    base = b"0123456789abcdef0123456789abcdef"
    changed = [base[:i] + bytes([base[i] ^ 1]) + base[i + 1 :] for i in range(len(base))]
    words = check_words(pa.array([base, *changed, base + b"\0"]), 7)
    assert len(set(words.tolist())) == len(words)
    assert check_words(pa.array([base]), 8)[0] != words[0]
    with pytest.raises(InputDataError, match="nulls"):
        check_words(pa.array([b"a", None]), 7)


def test_known_answers() -> None:
    values = [b"abc", b"", b"0123456789abcdef0123456789abcdef"]
    digests = keyed_digests(pa.array(values, type=pa.binary()), KEY)
    assert [d.hex() for d in as_bytes(digests)] == [
        "6ca4f2da18488992bfbb07b84df3d599",
        "1f5406535a6541831be128bdd747c46b",
        "f948416ecc6a9ef0b82eac3965a1b002",
    ]
    assert digests.dtype == np.dtype("<u8") and digests.shape == (3, 2)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.binary(max_size=70), max_size=40), st.binary(min_size=16, max_size=40))
def test_vectorised_digests_equal_the_per_id_oracle(values: list[bytes], key: bytes) -> None:
    digests = keyed_digests(pa.array(values, type=pa.binary()), key)
    assert as_bytes(digests) == [oracle_digest(v, key) for v in values]


@pytest.mark.parametrize("length", [0, 1, 7, 8, 9, 24, 32, 40, 100])
def test_fixed_length_fast_path_matches_oracle(length: int) -> None:
    rng = np.random.default_rng(length)
    values = [rng.bytes(length) for _ in range(50)]
    digests = keyed_digests(pa.array(values, type=pa.binary()), KEY)
    assert as_bytes(digests) == [oracle_digest(v, KEY) for v in values]


def test_trailing_nul_and_padding_do_not_collide() -> None:
    values = [b"a", b"a\0", b"a\0\0\0\0\0\0\0", b"\x01" + b"\0" * 7 + b"a"]
    digests = as_bytes(keyed_digests(pa.array(values, type=pa.binary()), KEY))
    assert len(set(digests)) == len(values)


def test_chunked_sliced_and_large_inputs_agree(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(digests_module, "_CHUNK_ROWS", 4)
    values = [f"id-{i}".encode() * (1 + i % 3) for i in range(23)]
    plain = as_bytes(keyed_digests(pa.array(values, type=pa.binary()), KEY))
    chunked = pa.chunked_array(
        [pa.array(values[:5], type=pa.binary()), pa.array(values[5:], type=pa.binary())]
    )
    sliced = pa.array([b"junk", *values], type=pa.binary()).slice(1)
    large = pa.array(values, type=pa.large_binary())
    text = pa.array([v.decode() for v in values])
    for keys in (chunked, sliced, large, text):
        assert as_bytes(keyed_digests(keys, KEY)) == plain
    assert plain == [oracle_digest(v, KEY) for v in values]


def test_digests_depend_on_the_key() -> None:
    values = pa.array([b"alice", b"bob"], type=pa.binary())
    one = keyed_digests(values, KEY)
    other = keyed_digests(values, bytes(32))
    assert not np.any(np.all(one == other, axis=1))


def test_the_raw_secret_is_not_used_as_the_aes_key() -> None:
    # The secret is domain-separated: AES-CBC-MAC under the raw secret is not the digest.
    value = b"alice"
    message = len(value).to_bytes(8, "little") + value + b"\0" * 3
    raw = Cipher(algorithms.AES(KEY), modes.CBC(b"\0" * 16)).encryptor().update(message)[-16:]
    assert as_bytes(keyed_digests(pa.array([value], type=pa.binary()), KEY)) != [raw]


def test_key_column_count_separates_domains() -> None:
    # ("a", "b") joined is b"a\x1fb"; a one-column ID b"a\x1fb" must still not match it.
    two = prepare_ids([pa.array(["a"]), pa.array(["b"])])
    one = prepare_ids([pa.array([b"a\x1fb"])])
    assert two.keys.to_pylist() == one.keys.to_pylist()
    two_digest = digest_ids(two, KEY).digests
    one_digest = digest_ids(one, KEY).digests
    assert not np.array_equal(two_digest, one_digest)
    assert as_bytes(two_digest) == [oracle_digest(b"a\x1fb", KEY, columns=2)]


def naive_cbc_mac(value: bytes, key: bytes) -> bytes:
    """Plain CBC-MAC of the zero-padded value, without the length prefix (insecure)."""
    message = value + b"\0" * (-len(value) % 16)
    return Cipher(algorithms.AES(key), modes.CBC(b"\0" * 16)).encryptor().update(message)[-16:]


def test_cbc_mac_splice_forgery_fails_against_the_length_prefix() -> None:
    # Attack: someone who learned t = MAC(x) builds z = x || (y XOR t). Under plain CBC-MAC,
    # MAC(z) == MAC(y): two different IDs collide (a false match). The length prefix stops it.
    x, y = b"A" * 16, b"B" * 16
    naive_key = bytes(32)
    t = naive_cbc_mac(x, naive_key)
    z = x + bytes(a ^ b for a, b in zip(y, t, strict=True))
    assert naive_cbc_mac(z, naive_key) == naive_cbc_mac(y, naive_key)  # the attack works there
    # Same splice against the real construction, with the attacker knowing its digest of x.
    t_real = as_bytes(keyed_digests(pa.array([x], type=pa.binary()), KEY))[0]
    z_real = x + bytes(a ^ b for a, b in zip(y, t_real, strict=True))
    digests = as_bytes(keyed_digests(pa.array([x, y, z_real], type=pa.binary()), KEY))
    assert len(set(digests)) == 3


def test_bad_keys_and_nulls_are_refused() -> None:
    values = pa.array([b"a"], type=pa.binary())
    with pytest.raises(ConfigurationError, match="at least 16 bytes, got 8"):
        keyed_digests(values, b"12345678")
    with pytest.raises(InputDataError, match="no nulls"):
        keyed_digests(pa.array([b"a", None], type=pa.binary()), KEY)
    with pytest.raises(InputDataError, match="binary or string"):
        keyed_digests(pa.array([1, 2]), KEY)
    with pytest.raises(ConfigurationError, match="key_columns: expected an integer >= 1"):
        keyed_digests(values, KEY, key_columns=0)


def prepared_of(ids: list[str]):  # type: ignore[no-untyped-def]
    return prepare_ids([pa.array(ids)])


def test_digest_ids_is_canonical_and_maps_rows() -> None:
    ids = ["carol", "alice", "bob", "dave"]
    own = digest_ids(prepared_of(ids), KEY)
    assert is_canonical(own.digests)
    assert sorted(own.row_index.tolist()) == [0, 1, 2, 3]
    for digest, row in zip(own.digests, own.row_index, strict=True):
        assert digest.tobytes() == oracle_digest(ids[row].encode(), KEY)
    assert own.duplicates.duplicated_ids == 0
    assert not own.digests.flags.writeable


def test_duplicates_error_by_default_with_counts_and_rows() -> None:
    ids = ["a", "b", " a", "c", "b", "a", "d"]
    with pytest.raises(InputDataError) as caught:
        digest_ids(prepared_of(ids), KEY)
    message = str(caught.value)
    assert "2 duplicated ID(s) on 5 rows" in message
    assert "rows 0, 2, 5" in message and "rows 1, 4" in message
    assert "first, drop-all" in message


def test_duplicates_first_keeps_lowest_row() -> None:
    ids = ["a", "b", "a", "c", "b", "a"]
    own = digest_ids(prepared_of(ids), KEY, duplicates="first")
    assert sorted(own.row_index.tolist()) == [0, 1, 3]
    report = own.duplicates
    assert report.policy is DuplicatePolicy.FIRST
    assert (report.duplicated_ids, report.duplicate_rows, report.dropped_rows) == (2, 5, 3)
    assert report.examples == ((0, 2, 5), (1, 4))


def test_duplicates_drop_all_drops_every_row() -> None:
    ids = ["a", "b", "a", "c", "b", "a"]
    own = digest_ids(prepared_of(ids), KEY, duplicates=DuplicatePolicy.DROP_ALL)
    assert own.row_index.tolist() == [3]
    assert own.duplicates.dropped_rows == 5


def test_unknown_policy_is_refused() -> None:
    with pytest.raises(
        ConfigurationError, match=r"expected one of error, first, drop-all; got 'keep-last'"
    ):
        digest_ids(prepared_of(["a"]), KEY, duplicates="keep-last")


@settings(max_examples=100, deadline=None)
@given(st.lists(st.sampled_from(["a", "b", "c", "d", "e", "f"]), min_size=1, max_size=40))
def test_duplicate_policies_match_oracle(ids: list[str]) -> None:
    first_rows = {value: ids.index(value) for value in ids}
    counts = {value: ids.count(value) for value in ids}
    first = digest_ids(prepared_of(ids), KEY, duplicates="first")
    assert sorted(first.row_index.tolist()) == sorted(first_rows.values())
    dropped = digest_ids(prepared_of(ids), KEY, duplicates="drop-all")
    assert sorted(dropped.row_index.tolist()) == sorted(
        first_rows[v] for v, c in counts.items() if c == 1
    )


def test_wire_form_round_trip_and_errors() -> None:
    own = digest_ids(prepared_of(["x", "y", "z"]), KEY)
    wire = digests_to_bytes(own.digests)
    assert len(wire) == 3 * DIGEST_BYTES
    assert np.array_equal(digests_from_bytes(wire), own.digests)
    with pytest.raises(ProtocolError, match="multiple of 16 bytes, got 47"):
        digests_from_bytes(wire[:-1])
    reversed_wire = digests_to_bytes(own.digests[::-1])
    with pytest.raises(ProtocolError, match="strictly increasing"):
        digests_from_bytes(reversed_wire)
    repeated = digests_to_bytes(np.repeat(own.digests[:1], 2, axis=0))
    with pytest.raises(ProtocolError, match="strictly increasing"):
        digests_from_bytes(repeated)
    assert len(digests_from_bytes(reversed_wire, canonical=False)) == 3
    with pytest.raises(ProtocolError, match=r"\(n, 2\) array of uint64"):
        digests_to_bytes(np.zeros((3, 3), dtype=np.uint64))


digest_rows = st.lists(
    st.tuples(st.integers(0, 3) | st.integers(0, 2**64 - 1), st.integers(0, 2**64 - 1)),
    max_size=60,
)


@settings(max_examples=200, deadline=None)
@given(digest_rows)
def test_sort_order_equals_lexicographic_sort(rows: list[tuple[int, int]]) -> None:
    digests = np.array(rows, dtype=np.uint64).reshape(-1, 2)
    order = sort_order(digests)
    expected = sorted(range(len(rows)), key=lambda i: (rows[i][0], rows[i][1], i))
    assert order.tolist() == expected


def test_sort_order_resolves_prefix_ties_exactly() -> None:
    # Same top bits (only low bits of word 0 differ) force the tie fix-up path.
    rng = np.random.default_rng(5)
    high = np.uint64(0xABCD) << np.uint64(48)
    digests = np.stack(
        [
            high + rng.integers(0, 256, 500).astype(np.uint64),
            rng.integers(0, 4, 500).astype(np.uint64),
        ],
        axis=1,
    )
    order = sort_order(digests)
    expected = np.lexsort((np.arange(500), digests[:, 1], digests[:, 0]))
    assert order.tolist() == expected.tolist()
