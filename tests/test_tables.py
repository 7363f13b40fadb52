"""Table I/O: streaming key reads, clear errors naming file and column, atomic writes."""

from __future__ import annotations

import io
import mmap
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from accord import csv_lines, tables
from accord.errors import ConfigurationError, InputDataError, ProtocolError

SAMPLE = pa.table(
    {
        "id": ["a1", "b2", "c3", "d4"],
        "name": ["Smith, J", 'say "hi"', "multi\nline", ""],
        "age": ["31", "07", "1.50", "x"],
    }
)


def write_csv_text(path: Path, text: bytes) -> Path:
    path.write_bytes(text)
    return path


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith("."))


# ----------------------------------------------------------------------------- reading


@pytest.mark.parametrize("name", ["in.csv", "in.tsv", "in.csv.gz", "in.parquet"])
def test_read_key_columns_in_every_format(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    if name.endswith(".parquet"):
        pq.write_table(SAMPLE, path)
    else:
        delimiter = "\t" if ".tsv" in name else ","
        codec = "gzip" if name.endswith(".gz") else None
        with pa.output_stream(str(path), compression=codec) as sink:
            pcsv.write_csv(SAMPLE, sink, pcsv.WriteOptions(delimiter=delimiter))
    keys = tables.read_key_columns(path, ["id", "age"])
    assert keys.column_names == ["id", "age"]
    got = [[v if isinstance(v, str) else v.decode() for v in c.to_pylist()] for c in keys.columns]
    assert got == [SAMPLE["id"].to_pylist(), SAMPLE["age"].to_pylist()]


def test_csv_keys_are_raw_bytes_and_keep_leading_zeros(tmp_path: Path) -> None:
    path = write_csv_text(tmp_path / "k.csv", b"id,x\n007,1\n\xff\xfe,2\n, 3\n")
    keys = tables.read_key_columns(path, ["id"])
    assert keys.schema.field("id").type == pa.binary()
    assert keys["id"].to_pylist() == [b"007", b"\xff\xfe", b""]


def test_streaming_read_spans_many_blocks_in_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tables, "_CSV_BLOCK_BYTES", 4096)
    ids = [f"id-{i:06d}" for i in range(5000)]
    path = tmp_path / "many.csv"
    pcsv.write_csv(pa.table({"id": ids, "v": list(range(5000))}), path)
    batches = list(tables.iter_key_batches(path, ["id"]))
    assert len(batches) > 5
    assert [v.decode() for b in batches for v in b.column(0).to_pylist()] == ids
    # A ragged row far into the file is reported while streaming, with no row contents.
    path.write_bytes(path.read_bytes() + b"secret-id\n")
    with pytest.raises(InputDataError) as caught:
        list(tables.iter_key_batches(path, ["id"]))
    assert "many.csv: malformed CSV after data row" in str(caught.value)
    assert "secret-id" not in str(caught.value)


def test_quoted_values_spanning_lines_and_blocks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Multi-line values crossing pyarrow's block boundaries must not desynchronise the reader.
    monkeypatch.setattr(tables, "_CSV_BLOCK_BYTES", 4096)
    rows = 2000
    path = tmp_path / "notes.csv"
    ids = [f"id{i}" for i in range(rows)]
    pcsv.write_csv(pa.table({"id": ids, "note": [f"a\nb {i}\r\n" for i in range(rows)]}), path)
    keys = tables.read_key_columns(path, ["id"])
    assert [v.decode() for v in keys["id"].to_pylist()] == ids
    out = tmp_path / "aligned.csv"
    tables.write_aligned_table(out, path, np.array([1999, 0]), source_rows=rows)
    assert tables.read_table(out).to_pydict() == {
        "id": ["id1999", "id0"],
        "note": ["a\nb 1999\r\n", "a\nb 0\r\n"],
    }


def test_missing_key_column_lists_available_columns(tmp_path: Path) -> None:
    csv_path = write_csv_text(tmp_path / "t.csv", b"id,name\n1,a\n")
    with pytest.raises(InputDataError) as caught:
        tables.read_key_columns(csv_path, ["patient"])
    assert str(caught.value) == (
        f"{csv_path}: key column 'patient' not found; the file has columns 'id', 'name'"
    )
    parquet_path = tmp_path / "t.parquet"
    pq.write_table(SAMPLE, parquet_path)
    with pytest.raises(
        InputDataError, match=r"key columns 'x', 'y' not found; .* 'id', 'name', 'age'"
    ):
        tables.read_key_columns(parquet_path, ["id", "x", "y"])


def test_empty_header_only_and_missing_files(tmp_path: Path) -> None:
    empty = write_csv_text(tmp_path / "empty.csv", b"")
    with pytest.raises(InputDataError, match=r"empty\.csv: the file is empty"):
        tables.read_key_columns(empty, ["id"])
    header = write_csv_text(tmp_path / "header.csv", b"id,x\n")
    with pytest.raises(InputDataError, match=r"header\.csv: no data rows"):
        tables.read_key_columns(header, ["id"])
    with pytest.raises(InputDataError, match=r"nope\.csv: no such file"):
        tables.read_key_columns(tmp_path / "nope.csv", ["id"])
    empty_parquet = tmp_path / "empty.parquet"
    pq.write_table(SAMPLE.slice(0, 0), empty_parquet)
    with pytest.raises(InputDataError, match=r"empty\.parquet: no data rows"):
        tables.read_key_columns(empty_parquet, ["id"])


def test_unreadable_and_malformed_files(tmp_path: Path) -> None:
    fake = write_csv_text(tmp_path / "fake.parquet", b"id,x\nsecret-id,1\n")
    with pytest.raises(InputDataError, match=r"fake\.parquet: not a readable Parquet file"):
        tables.read_key_columns(fake, ["id"])
    ragged = write_csv_text(tmp_path / "ragged.csv", b"id,x\nok,1\nsecret-id\n")
    with pytest.raises(InputDataError) as caught:
        tables.read_key_columns(ragged, ["id"])
    assert str(caught.value).startswith(f"{ragged}: ")
    assert "Expected 2 columns, got 1" in str(caught.value)
    assert "secret-id" not in str(caught.value)
    with pytest.raises(InputDataError, match=r"data\.json: expected a \.csv"):
        tables.read_key_columns(tmp_path / "data.json", ["id"])
    with pytest.raises(ConfigurationError, match="distinct"):
        tables.read_key_columns(ragged, ["id", "id"])


def test_read_table_keeps_csv_text_exactly(tmp_path: Path) -> None:
    path = write_csv_text(tmp_path / "t.csv", b'id,age\n"a",007\nb,1.50\n')
    table = tables.read_table(path)
    assert table.to_pydict() == {"id": ["a", "b"], "age": ["007", "1.50"]}


def test_read_table_names_a_non_utf8_column(tmp_path: Path) -> None:
    path = write_csv_text(tmp_path / "t.csv", b"id,notes\na,\xff\n")
    with pytest.raises(InputDataError, match=r"t\.csv: cannot read CSV: .*\(column 'notes'\)"):
        tables.read_table(path)


# ----------------------------------------------------------------------------- writing


@pytest.mark.parametrize("suffix", ["csv", "parquet"])
def test_write_row_map_with_ids(tmp_path: Path, suffix: str) -> None:
    ids = pa.table({"id": pa.array([b"a1", b"b2", b"c3"])})
    path = tmp_path / f"map.{suffix}"
    tables.write_row_map(path, np.array([2, 0]), ids=ids)
    written = pq.read_table(path) if suffix == "parquet" else pcsv.read_csv(path)
    assert written.column("position").to_pylist() == [0, 1]
    assert written.column("row").to_pylist() == [2, 0]
    assert written.column("id").to_pylist() == ["c3", "a1"]
    assert leftovers(tmp_path) == []


def test_write_row_map_without_ids_and_empty(tmp_path: Path) -> None:
    path = tmp_path / "map.csv"
    tables.write_row_map(path, np.array([], dtype=np.int64))
    assert path.read_text().splitlines() == ["position,row"]


def test_csv_headers_are_quoted_only_where_needed_as_the_values(tmp_path: Path) -> None:
    ids = pa.table({"id": pa.array([b"a1", b"b,2"])})
    row_map = tmp_path / "map.csv"
    tables.write_row_map(row_map, np.array([1, 0]), ids=ids)
    # (pyarrow quotes every text value; the header, like an input's header, only if needed)
    assert row_map.read_text().splitlines() == ["position,row,id", '0,1,"b,2"', '1,0,"a1"']
    source = tmp_path / "source.parquet"  # Parquet in, CSV out: the table path, not a copy
    pq.write_table(pa.table({"id": ["x", "y"], 'odd, "name"': [1, 2]}), source)
    aligned = tmp_path / "aligned.csv"
    tables.write_aligned_table(aligned, source, np.array([1, 0]))
    assert aligned.read_text().splitlines() == ['id,"odd, ""name"""', '"y",2', '"x",1']
    assert pcsv.read_csv(aligned).column_names == ["id", 'odd, "name"']


def source_csv(tmp_path: Path) -> Path:
    # Quoted delimiter, doubled quotes, an embedded newline, CRLF, an empty line, no final EOL.
    return write_csv_text(
        tmp_path / "src.csv",
        b'id,name,age\r\n"a1","Smith, J",31\r\n\r\nb2,"say ""hi""",07\nc3,"multi\nline",1.50\n'
        b"d4,,x",
    )


def test_aligned_csv_copies_lines_verbatim(tmp_path: Path) -> None:
    source = source_csv(tmp_path)
    out = tmp_path / "aligned.csv"
    seen: list[int] = []
    tables.write_aligned_table(
        out, source, np.array([2, 0, 3]), source_rows=4, progress=seen.append
    )
    assert out.read_bytes() == (
        b'id,name,age\r\nc3,"multi\nline",1.50\n"a1","Smith, J",31\r\nd4,,x\n'
    )
    assert seen == [3]
    assert leftovers(tmp_path) == []


def test_aligned_table_path_for_other_formats(tmp_path: Path) -> None:
    source = source_csv(tmp_path)
    expected = {
        "id": ["c3", "a1"],
        "name": ["multi\nline", "Smith, J"],
        "age": ["1.50", "31"],
    }
    parquet_out = tmp_path / "aligned.parquet"
    tables.write_aligned_table(parquet_out, source, np.array([2, 0]), source_rows=4)
    assert pq.read_table(parquet_out).to_pydict() == expected
    # Without source_rows, and to TSV: the table path; the text is the same.
    tsv_out = tmp_path / "aligned.tsv"
    tables.write_aligned_table(tsv_out, source, np.array([2, 0]))
    read_back = pcsv.read_csv(
        tsv_out,
        parse_options=pcsv.ParseOptions(delimiter="\t"),
        convert_options=pcsv.ConvertOptions(column_types=dict.fromkeys(expected, pa.string())),
    )
    assert read_back.to_pydict() == expected
    # Parquet source keeps its types; a table source works too.
    parquet_in = tmp_path / "in.parquet"
    typed = pa.table({"id": ["x", "y", "z"], "score": [1.5, 2.5, 3.5]})
    pq.write_table(typed, parquet_in)
    for source_value in (parquet_in, typed):
        out = tmp_path / "typed.parquet"
        tables.write_aligned_table(out, source_value, np.array([1, 2]))
        assert pq.read_table(out).to_pydict() == {"id": ["y", "z"], "score": [2.5, 3.5]}


def test_stray_quotes_fall_back_to_the_table_path(tmp_path: Path) -> None:
    # pyarrow reads a quote inside an unquoted field literally; the line scan must not guess.
    source = write_csv_text(tmp_path / "s.csv", b'id,v\na"b,1\n"c\nd",2\ne,3\n')
    out = tmp_path / "o.csv"
    tables.write_aligned_table(out, source, np.array([2, 1, 0]), source_rows=3)
    read_back = pcsv.read_csv(
        out, convert_options=pcsv.ConvertOptions(column_types={"v": pa.string()})
    )
    assert read_back.to_pydict() == {"id": ["e", "c\nd", 'a"b'], "v": ["3", "2", "1"]}


csv_field = st.text(alphabet='ab ,"\n\r\t', max_size=5)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.lists(st.tuples(csv_field, csv_field), min_size=1, max_size=15), st.data())
def test_line_copy_equals_table_gather(
    tmp_path: Path, rows: list[tuple[str, str]], data: st.DataObject
) -> None:
    source = tmp_path / "h.csv"
    table = pa.table({"k": [r[0] for r in rows], "v": [r[1] for r in rows]})
    buffer = io.BytesIO()
    pcsv.write_csv(table, buffer, pcsv.WriteOptions(quoting_style="all_valid"))
    source.write_bytes(buffer.getvalue())
    assert_line_copy_matches(tmp_path, source, data)


def assert_line_copy_matches(tmp_path: Path, source: Path, data: st.DataObject) -> None:
    read = tables.read_table(source)
    order = np.array(data.draw(st.permutations(list(range(read.num_rows)))), dtype=np.int64)
    order = order[: data.draw(st.integers(1, read.num_rows))]  # the shared rows: a subset
    bounded = data.draw(st.booleans(), label="bounded")
    out = tmp_path / "h_out.csv"
    copied = []
    # Tiny scan pieces, write chunks and partitions: quote parity and CRLF pairs cross piece
    # borders, a partition ends inside a chunk, pages are released as the scan goes.
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(csv_lines, "_SCAN_BYTES", 5)
        patch.setattr(csv_lines, "_WRITE_CHUNK_ROWS", 3)
        patch.setattr(csv_lines, "_PARTITION_BYTES", data.draw(st.integers(1, 40)))
        patch.setattr(csv_lines, "_RESIDENT_BYTES", 0)
        patch.setattr(tables, "_write_arrow", lambda *a, **k: copied.append("table path"))
        tables.write_aligned_table(out, source, order, source_rows=read.num_rows, bounded=bounded)
    assert copied == []  # the verbatim line path was taken
    assert tables.read_table(out).to_pydict() == read.take(pa.array(order)).to_pydict()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["h_out.csv", source.name])


terminators = st.sampled_from(["\n", "\r\n", "\r"])
plain_field = st.text(alphabet="ab ", min_size=1, max_size=3)
quoted_field = st.text(alphabet='ab,\n\r"', max_size=4).map(
    lambda t: '"' + t.replace('"', '""') + '"'
)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.lists(
        st.tuples(plain_field, quoted_field | plain_field, terminators, st.booleans()),
        min_size=1,
        max_size=12,
    ),
    st.booleans(),
    st.data(),
)
def test_line_copy_handles_terminators_and_blank_lines(
    tmp_path: Path, rows: list[tuple[str, str, str, bool]], final_newline: bool, data: st.DataObject
) -> None:
    text = "k,v\r\n"
    for index, (key, value, end, blank_after) in enumerate(rows):
        last = index == len(rows) - 1
        text += f"{key},{value}" + (end if final_newline or not last else "")
        if blank_after and not last:
            text += end
    source = tmp_path / "t.csv"
    source.write_bytes(text.encode())
    assert_line_copy_matches(tmp_path, source, data)


def test_bad_row_map_writes_nothing(tmp_path: Path) -> None:
    source = source_csv(tmp_path)
    out = tmp_path / "aligned.csv"
    with pytest.raises(ProtocolError, match=r"row indices in \[0, 4\), got \[0, 4\]"):
        tables.write_aligned_table(out, source, np.array([0, 4]), source_rows=4)
    with pytest.raises(ProtocolError, match="1-D integer array"):
        tables.write_aligned_table(out, source, np.array([0.5]), source_rows=4)
    assert not out.exists()
    assert leftovers(tmp_path) == []


def test_bounded_copy_refuses_a_repeated_row_and_writes_nothing(tmp_path: Path) -> None:
    source = source_csv(tmp_path)
    out = tmp_path / "aligned.csv"
    with pytest.raises(ProtocolError, match="expected distinct rows, found a row repeated"):
        tables.write_aligned_table(out, source, np.array([2, 0, 2]), source_rows=4, bounded=True)
    assert not out.exists()
    assert leftovers(tmp_path) == []


_PEAK_OF_A_COPY = """
import sys
import numpy as np
from accord import csv_lines, tables
csv_lines._RESIDENT_BYTES = csv_lines._PARTITION_BYTES = 8 << 20
rows = int(sys.argv[3])
order = np.random.default_rng(0).permutation(rows)[: rows // 2]
tables.write_aligned_table(sys.argv[2], sys.argv[1], order, source_rows=rows,
                           bounded=sys.argv[4] == "bounded")
status = open("/proc/self/status").read().split("VmHWM:")[1]  # ru_maxrss survives exec
print(int(status.split()[0]) * 1024)
"""


def test_bounded_copy_keeps_the_input_out_of_resident_memory(tmp_path: Path) -> None:
    rows = 2_000_000
    source = tmp_path / "big.csv"
    lines = np.char.add(np.arange(rows).astype("U12"), ",payload-of-forty-bytes-0123456789abcdef\n")
    source.write_bytes(b"id,v\n" + "".join(lines.tolist()).encode())
    size = source.stat().st_size  # ~100 MB
    peaks = {}
    for mode in ("bounded", "mapped"):
        out = tmp_path / f"{mode}.csv"
        done = subprocess.run(
            [sys.executable, "-c", _PEAK_OF_A_COPY, str(source), str(out), str(rows), mode],
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
        peaks[mode] = int(done.stdout.split()[-1])
    assert (tmp_path / "bounded.csv").read_bytes() == (tmp_path / "mapped.csv").read_bytes()
    # The mapped copy touches every page of the input; the bounded one holds its line
    # offsets (8 B a line), a partition and ~8 MiB of mapped pages at a time.
    assert peaks["mapped"] - peaks["bounded"] > 0.5 * size, peaks


def test_failed_write_leaves_no_file_and_keeps_the_old_one(tmp_path: Path) -> None:
    # A binary column that is not UTF-8 cannot go to CSV: the writer fails mid-way.
    out = tmp_path / "aligned.csv"
    out.write_text("previous result\n")
    bad = pa.table({"id": pa.array([b"ok"] * 5 + [b"\xff"], type=pa.binary())})
    with pytest.raises(InputDataError, match=r"aligned\.csv: cannot write the table"):
        tables.write_aligned_table(out, bad, np.arange(6))
    assert out.read_text() == "previous result\n"
    assert leftovers(tmp_path) == []
    fresh = tmp_path / "fresh.csv"
    with pytest.raises(InputDataError):
        tables.write_aligned_table(fresh, bad, np.arange(6))
    assert not fresh.exists()
    assert leftovers(tmp_path) == []


def test_unsupported_output_suffix_and_key_name_clash(tmp_path: Path) -> None:
    with pytest.raises(InputDataError, match=r"out\.xlsx: expected"):
        tables.write_row_map(tmp_path / "out.xlsx", np.array([0]))
    with pytest.raises(ConfigurationError, match="named 'row'"):
        tables.write_row_map(
            tmp_path / "m.csv", np.array([0]), ids=pa.table({"row": pa.array([b"a"])})
        )
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("bounded", [False, True])
def test_literal_quotes_balanced_by_quoted_newlines_do_not_cut_rows_wrongly(
    tmp_path: Path, bounded: bool
) -> None:
    # pyarrow reads `15"` and `17"` literally; counting them as quotes would pair them with
    # the quoted newlines and cut the rows in the wrong places with the right row count.
    source = write_csv_text(
        tmp_path / "in.csv", b'id,size,note\n1,15",ok\n2,"multi\nline",ok\n3,"x\ny",17"\n'
    )
    out = tmp_path / "out.csv"
    order = np.array([2, 0])
    tables.write_aligned_table(out, source, order, source_rows=3, bounded=bounded)
    expected = tables.read_table(source).take(pa.array(order))
    assert tables.read_table(out).to_pydict() == expected.to_pydict()


@pytest.mark.parametrize("bounded", [False, True])
def test_a_compressed_csv_output_is_compressed(tmp_path: Path, bounded: bool) -> None:
    source = write_csv_text(tmp_path / "in.csv", b"id,x\na,1\nb,2\nc,3\n")
    out = tmp_path / "out.csv.gz"
    tables.write_aligned_table(out, source, np.array([2, 0]), source_rows=3, bounded=bounded)
    assert out.read_bytes()[:2] == b"\x1f\x8b"
    assert tables.read_table(out).to_pydict() == {"id": ["c", "a"], "x": ["3", "1"]}


_FEW_FILES = """
import resource, sys
import numpy as np
from accord import csv_lines, tables
resource.setrlimit(resource.RLIMIT_NOFILE, (128, 128))
csv_lines._PARTITION_BYTES = 1  # would ask for one partition per row, 2 files each
rows = 2048
order = np.random.default_rng(1).permutation(rows)
tables.write_aligned_table(sys.argv[2], sys.argv[1], order, source_rows=rows, bounded=True)
"""


def test_bounded_copy_stays_within_the_open_file_limit(tmp_path: Path) -> None:
    source = tmp_path / "in.csv"
    source.write_text("id\n" + "".join(f"{i}\n" for i in range(2048)))
    out = tmp_path / "out.csv"
    done = subprocess.run(
        [sys.executable, "-c", _FEW_FILES, str(source), str(out)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    order = np.random.default_rng(1).permutation(2048)
    assert out.read_text().split("\n")[1:-1] == [str(i) for i in order]


def test_a_plain_csv_larger_than_a_scan_piece_is_copied_in_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 40k lines over 256 KiB scan pieces, gathered 4096 lines at a time: lines cut at piece
    # edges and rows from several gathers come out whole and in the order asked.
    monkeypatch.setattr(csv_lines, "_GATHER_ROWS", 4096)
    lines = [f"id-{i:06d},{i * 7 % 1000},{'x' * (i % 13)}\n" for i in range(40_000)]
    source = tmp_path / "big.csv"
    source.write_text("id,a,b\n" + "".join(lines))
    assert source.stat().st_size > 3 * csv_lines._NEWLINE_SCAN_BYTES
    rows = np.random.default_rng(5).permutation(40_000)[:30_000]
    target = tmp_path / "out.csv"
    tables.write_aligned_table(target, source, rows, source_rows=40_000)
    assert target.read_text() == "id,a,b\n" + "".join(lines[r] for r in rows.tolist())


def test_the_key_reader_block_size_sets_the_batches(tmp_path: Path) -> None:
    path = tmp_path / "keys.csv"
    pcsv.write_csv(pa.table({"id": [f"id-{i:06d}" for i in range(5000)]}), path)
    assert len(list(tables.iter_key_batches(path, ["id"]))) == 1
    small = list(tables.iter_key_batches(path, ["id"], block_bytes=4096))
    assert len(small) > 5
    assert sum(batch.num_rows for batch in small) == 5000


@pytest.mark.parametrize(
    ("data", "plain"),
    [
        (b'"id","x"\na,1\nb,2\n', True),  # quoted names (pyarrow's writer), plain rows
        (b"id,x\na,1\nb,2\n", True),
        (b'"i\nd",x\na,1\nb,2\n', False),  # a line break inside the header's quotes
        (b'"id",x\na,"1"\nb,2\n', False),  # a quote in a data row
        (b'i"d,x\na,1\nb,2\n', False),  # a literal quote in the header
        (b'"id",x\r\na,1\r\nb,2\r\n', False),
    ],
)
def test_only_a_file_whose_newlines_all_end_lines_is_scanned_plainly(
    tmp_path: Path, data: bytes, plain: bool
) -> None:
    source = tmp_path / "in.csv"
    source.write_bytes(data)
    with open(source, "rb") as handle:
        mapped = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
    assert csv_lines._is_plain(mapped, np.frombuffer(mapped, dtype=np.uint8), ord(",")) is plain
    del mapped
    target = tmp_path / "out.csv"
    tables.write_aligned_table(target, source, np.array([1, 0]), source_rows=2)
    rows = pcsv.read_csv(source).to_pylist()
    assert pcsv.read_csv(target).to_pylist() == [rows[1], rows[0]]
