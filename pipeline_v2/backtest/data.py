"""OHLCV bars: loading (CSV, Parquet when pyarrow is present), validation and windows."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline_v2.backtest.errors import DataError

PRICE_COLUMNS = ("open", "high", "low", "close")
TIME_COLUMNS = ("date", "time", "datetime", "timestamp")


@dataclass(frozen=True)
class Bars:
    """Aligned OHLCV arrays; `time` is datetime64[s], strictly increasing."""

    time: np.ndarray
    open: np.ndarray
    high: np.ndarray
    low: np.ndarray
    close: np.ndarray
    volume: np.ndarray
    source: str = "<memory>"

    def __len__(self) -> int:
        return len(self.close)

    def slice(self, start: int, stop: int) -> Bars:
        """Bars [start, stop)."""
        return Bars(self.time[start:stop], self.open[start:stop], self.high[start:stop],
                    self.low[start:stop], self.close[start:stop], self.volume[start:stop],
                    self.source)

    def window(self, start: str | None = None, end: str | None = None) -> Bars:
        """Bars with start <= time < end (ISO dates or datetimes; either may be omitted)."""
        return self.slice(*self.window_bounds(start, end))

    def window_bounds(self, start: str | None = None, end: str | None = None
                      ) -> tuple[int, int]:
        """The indices [lo, hi) of `window(start, end)`; at least 2 bars."""
        lo = 0 if start is None else int(np.searchsorted(self.time, _when(start, "start")))
        hi = len(self) if end is None else int(np.searchsorted(self.time, _when(end, "end")))
        if hi - lo < 2:
            raise DataError(
                f"{self.source}: the window start={start!r} end={end!r} holds {max(hi - lo, 0)} "
                f"bar(s) of {len(self)} ({self.time[0]} .. {self.time[-1]}); expected at least 2"
            )
        return lo, hi

    def window_with_history(self, start: str | None, end: str | None, history: int
                            ) -> tuple[Bars, int]:
        """The window plus up to `history` bars before it (for indicator warm-up), and the
        index at which the window itself begins."""
        lo, hi = self.window_bounds(start, end)
        first = max(0, lo - history)
        return self.slice(first, hi), lo - first


def _when(text: str, name: str) -> np.datetime64:
    try:
        return np.datetime64(str(text), "s")
    except ValueError:
        raise DataError(f'{name}: expected a date like "2021-06-30", got "{text}"') from None


def from_arrays(time: np.ndarray, open_: np.ndarray, high: np.ndarray, low: np.ndarray,
                close: np.ndarray, volume: np.ndarray | None = None,
                source: str = "<memory>") -> Bars:
    """Validated bars from arrays."""
    n = len(close)
    bars = Bars(
        np.asarray(time).astype("datetime64[s]"),
        *(np.asarray(a, dtype=np.float64) for a in (open_, high, low, close)),
        np.zeros(n) if volume is None else np.asarray(volume, dtype=np.float64),
        source,
    )
    validate(bars)
    return bars


def validate(bars: Bars) -> None:
    """Raise DataError naming the first bad row (1-based, as in the file)."""
    src = bars.source
    if len(bars) < 2:
        raise DataError(f"{src}: expected at least 2 bars, got {len(bars)}")
    for name in PRICE_COLUMNS:
        values = getattr(bars, name)
        bad = np.flatnonzero(~np.isfinite(values) | (values <= 0))
        if bad.size:
            i = int(bad[0])
            raise DataError(f"{src}: row {i + 1}: {name} must be a positive number, "
                            f"got {float(values[i])!r} ({bad.size} bad row(s))")
    bad = np.flatnonzero(bars.high < bars.low)
    if bad.size:
        i = int(bad[0])
        raise DataError(f"{src}: row {i + 1}: high {bars.high[i]:g} < low {bars.low[i]:g} "
                        f"({bad.size} bad row(s))")
    steps = np.diff(bars.time.astype(np.int64))
    if (steps == 0).any():
        i = int(np.flatnonzero(steps == 0)[0]) + 1
        raise DataError(f"{src}: row {i + 1}: duplicate timestamp {bars.time[i]}")
    if (steps < 0).any():
        i = int(np.flatnonzero(steps < 0)[0]) + 1
        raise DataError(f"{src}: row {i + 1}: timestamp {bars.time[i]} is before the previous "
                        f"one ({bars.time[i - 1]}); expected increasing times")


def load_bars(path: Path | str) -> Bars:
    """Load OHLCV bars from CSV (or Parquet, if pyarrow is installed)."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such data file")
    if path.suffix.lower() == ".parquet":
        return _load_parquet(path)
    with path.open(newline="", encoding="utf-8-sig") as fh:
        rows = list(csv.reader(fh))
    if len(rows) < 2:
        raise DataError(f"{path}: expected a header row and data rows")
    header = [h.strip().lower() for h in rows[0]]
    missing = [c for c in PRICE_COLUMNS if c not in header]
    if missing:
        raise DataError(f"{path}: missing column(s) {', '.join(missing)} "
                        f"(found {', '.join(h or '<unnamed>' for h in header)}; "
                        "expected open, high, low, close, optionally volume, case-insensitive)")
    time_index = next((header.index(c) for c in TIME_COLUMNS if c in header), 0)
    if header[time_index] in (*PRICE_COLUMNS, "volume"):  # no date column, no index column
        raise DataError(f"{path}: no date column (expected one named "
                        f"{', '.join(TIME_COLUMNS)}, or an unnamed first column as pandas "
                        f"writes it; found {', '.join(header)})")
    body = [r for r in rows[1:] if r]
    try:
        times = _parse_times([r[time_index] for r in body], path, header[time_index])
    except IndexError:
        raise DataError(f"{path}: a row has fewer columns than the header") from None
    columns = {}
    for name in (*PRICE_COLUMNS, "volume"):
        if name not in header:
            continue
        index = header.index(name)
        values = np.empty(len(body))
        for i, row in enumerate(body):
            try:
                cell = row[index].strip()
                values[i] = float(cell) if cell else np.nan
            except (ValueError, IndexError):
                raise DataError(f"{path}: row {i + 2}: {name} must be a number, "
                                f"got {row[index] if index < len(row) else ''!r}") from None
        columns[name] = values
    bars = Bars(times, columns["open"], columns["high"], columns["low"], columns["close"],
                columns.get("volume", np.zeros(len(body))), str(path))
    try:
        validate(bars)
    except DataError as exc:  # report rows as file lines (the header is line 1)
        raise DataError(str(exc).replace(": row ", ": data row ", 1)) from None
    return bars


def _parse_times(cells: list[str], path: Path, column: str) -> np.ndarray:
    cells = [c.strip() for c in cells]
    try:
        if all(_is_number(c) for c in cells[:10]):
            return np.asarray([float(c) for c in cells]).astype("datetime64[s]")
        return np.asarray([c.replace("T", " ").split("+")[0].rstrip("Z") for c in cells],
                          dtype="datetime64[s]")
    except ValueError as exc:
        raise DataError(f"{path}: column {column or '<first>'!s}: cannot read timestamps "
                        f"({exc}); expected ISO dates like 2021-06-30 or epoch seconds") from None


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _load_parquet(path: Path) -> Bars:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError(f"{path}: reading Parquet needs pyarrow (pip install pyarrow), "
                        "or pass a CSV") from None
    table = pq.read_table(path)
    names = {n.lower(): n for n in table.column_names}
    missing = [c for c in PRICE_COLUMNS if c not in names]
    if missing:
        raise DataError(f"{path}: missing column(s) {', '.join(missing)}")
    time_name = next((names[c] for c in TIME_COLUMNS if c in names), table.column_names[0])
    get = lambda n: table.column(names[n]).to_numpy()  # noqa: E731
    volume = get("volume") if "volume" in names else None
    return from_arrays(table.column(time_name).to_numpy(), get("open"), get("high"), get("low"),
                       get("close"), volume, str(path))


def save_csv(bars: Bars, path: Path) -> None:
    """Write bars as a CSV with a `date` column."""
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["date", "open", "high", "low", "close", "volume"])
        for i in range(len(bars)):
            writer.writerow([str(bars.time[i]).replace("T", " "), repr(float(bars.open[i])),
                             repr(float(bars.high[i])), repr(float(bars.low[i])),
                             repr(float(bars.close[i])), repr(float(bars.volume[i]))])
