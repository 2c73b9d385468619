"""The spreadsheet-safe copy of a labels CSV: `catdog export-xlsx` writes an .xlsx (openpyxl, write-only, so
memory stays flat) in which every text cell is a text cell.

A labels CSV opened in a spreadsheet is parsed again by the spreadsheet: a file named `=1+1.jpg` becomes a
formula, `=HYPERLINK(...)` a live link, `007`, `1e5` and `2024-01-02` numbers and dates. The CSV itself keeps
the exact path (merge, resume and pandas rely on it); this copy is for people. `path`, `label`, `status` and
`error` are typed text cells (never formulas, numbers or dates), `p_dog` and `pet_score` numbers. A sheet holds
at most 1,048,576 rows, so a larger CSV continues on further sheets (`labels 2`, ...).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from catdog.errors import CatdogError, printable
from catdog.fsutil import atomic_path
from catdog.labeling.reading import LabelsReader, check_new_output

SHEET_ROWS = 1_048_576  # rows per sheet in Excel and LibreOffice, the header included
_SCORES = ("p_dog", "pet_score")
# What XML 1.0 cannot hold besides the control characters of openpyxl's ILLEGAL_CHARACTERS_RE: U+FFFE and U+FFFF,
# valid UTF-8 in a file name. openpyxl writes them as they are, and the sheet is then not XML (LibreOffice opens
# it with no rows at all).
_NOT_XML = "[\ufffe\uffff]"


@dataclass(frozen=True)
class ExportResult:
    out: Path
    rows: int
    sheets: int


def _openpyxl():
    try:
        import openpyxl
        from openpyxl.cell import WriteOnlyCell
        from openpyxl.cell.cell import ILLEGAL_CHARACTERS_RE
    except ImportError:
        raise CatdogError('export-xlsx needs openpyxl: pip install openpyxl (or ".[xlsx]")') from None
    return openpyxl, WriteOnlyCell, ILLEGAL_CHARACTERS_RE


def export_xlsx(labels_csv: Path, out: Path, overwrite: bool = False) -> ExportResult:
    """Write `labels_csv` (checked as `report` and `merge-labels` check it) to the workbook `out`."""
    openpyxl, WriteOnlyCell, control = _openpyxl()
    illegal = re.compile(f"{control.pattern}|{_NOT_XML}")
    out = Path(out)
    check_new_output(out, overwrite, "an .xlsx", Path(labels_csv))
    rows = 0
    with LabelsReader(labels_csv) as reader, atomic_path(out, ".xlsx") as tmp:
        header = reader.header
        scores = [i for i, name in enumerate(header) if name in _SCORES]
        book = openpyxl.Workbook(write_only=True)
        sheet, in_sheet = None, 0

        def text(value: str):
            # XML cannot hold most control characters: those (legal in a file name, never in a real one) are shown
            # escaped, as every message shows them. openpyxl would take a text starting with "=" for a formula:
            # that one is typed as a string. Any other text is a string cell already (never a number or date).
            if not value:
                return None  # an empty cell
            if illegal.search(value):
                value = illegal.sub(lambda m: printable(m.group(0)), value)
            if not value.startswith("="):
                return value
            cell = WriteOnlyCell(sheet, value=value)
            cell.data_type = "s"
            return cell

        try:
            for fields in reader.fields():
                if sheet is None or in_sheet == SHEET_ROWS:
                    sheet = book.create_sheet("labels" if sheet is None else f"labels {len(book.worksheets) + 1}")
                    sheet.append([text(name) for name in header])
                    in_sheet = 1
                row = [text(value) for value in fields]
                for i in scores:
                    if fields[i]:
                        row[i] = float(fields[i])
                sheet.append(row)
                in_sheet += 1
                rows += 1
        except BaseException:
            # A refused row: end the sheets' writers now. Left to the garbage collector, they would write to
            # their closed temporary files and openpyxl would print a traceback after the one-line error.
            for written in book.worksheets:
                written.close()
            raise
        if sheet is None:
            sheet = book.create_sheet("labels")
            sheet.append([text(name) for name in header])
        sheets = len(book.worksheets)
        book.save(tmp)
    return ExportResult(out, rows, sheets)
