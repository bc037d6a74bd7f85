"""Speech turns (score's segments table) as a file: CSV, RTTM for diarization tools, or a Praat TextGrid.

RTTM (NIST Rich Transcription Time Marked): one ``SPEAKER`` line per turn,
``SPEAKER <file> 1 <start> <dur> <NA> <NA> <label> <NA> <NA>``, fields separated by single spaces, so a
file id cannot hold whitespace: it is the report's path with every run of whitespace replaced by ``_``.

TextGrid (Praat's long text format): ONE file for the whole batch, one interval tier per recording, named
by its path; the tier holds the turns (text ``female``/``male``) and empty intervals between them, from 0 to
the longest recording's duration (Praat wants every tier of a grid on one time domain). Select the tier of
the recording you open with it. One file, not one per recording: ``--segments FILE`` names one output,
written atomically like the report.
"""
from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from voiceclf import safeio

FORMATS = ("csv", "rttm", "textgrid")


def rttm_id(path: str) -> str:
    """A recording's file id in RTTM: its path, whitespace runs replaced by ``_`` (RTTM splits on spaces)."""
    return re.sub(r"\s+", "_", str(path)) or "_"


def to_rttm(segments: pd.DataFrame) -> str:
    """The turns as RTTM text, one ``SPEAKER`` line per turn, in the table's order."""
    lines = [f"SPEAKER {rttm_id(s.path)} 1 {s.start_s:.3f} {s.end_s - s.start_s:.3f} <NA> <NA> {s.label} <NA> <NA>"
             for s in segments.itertuples(index=False)]
    return "".join(line + "\n" for line in lines)


def _quoted(text: str) -> str:
    """A TextGrid string literal: in double quotes, an inner quote doubled (Praat's escape)."""
    return '"' + str(text).replace('"', '""') + '"'


def _intervals(turns: pd.DataFrame, xmax: float) -> list[tuple[float, float, str]]:
    """A tier's intervals from 0 to ``xmax``: the turns, and empty intervals filling the gaps (Praat needs them)."""
    out, t = [], 0.0
    for s in turns.sort_values("start_s").itertuples(index=False):
        if s.start_s > t:
            out.append((t, s.start_s, ""))
        out.append((max(t, s.start_s), s.end_s, s.label))
        t = s.end_s
    if xmax > t:
        out.append((t, xmax, ""))
    return out


def to_textgrid(segments: pd.DataFrame, durations_s: dict[str, float]) -> str:
    """The turns as one Praat TextGrid (long text format): one interval tier per recording in ``durations_s``.

    durations_s : every recording to give a tier (path → its length in seconds; a recording without turns
    gets one empty interval).
    """
    ends = [float(e) for e in segments["end_s"]] if len(segments) else []
    xmax = max([*[float(d) for d in durations_s.values() if d == d], *ends, 0.0]) or 1.0  # d == d: not NaN
    by_path = {p: g for p, g in segments.groupby("path", sort=False)} if len(segments) else {}
    lines = ['File type = "ooTextFile"', 'Object class = "TextGrid"', "", "xmin = 0", f"xmax = {xmax:.3f}", "tiers? <exists>",
             f"size = {len(durations_s)}", "item []:"]
    for i, path in enumerate(durations_s, start=1):
        ivs = _intervals(by_path.get(path, segments.iloc[:0]), xmax)
        lines += [f"    item [{i}]:", '        class = "IntervalTier"', f"        name = {_quoted(path)}",
                  "        xmin = 0", f"        xmax = {xmax:.3f}", f"        intervals: size = {len(ivs)}"]
        for j, (a, b, text) in enumerate(ivs, start=1):
            lines += [f"        intervals [{j}]:", f"            xmin = {a:.3f}", f"            xmax = {b:.3f}", f"            text = {_quoted(text)}"]
    return "\n".join(lines) + "\n"


def write(segments: pd.DataFrame, report: pd.DataFrame, path: str | Path, fmt: str = "csv") -> None:
    """Write the turns to ``path`` atomically in ``fmt`` (one of :data:`FORMATS`); ``report`` gives the
    recordings (every ``ok`` file gets a TextGrid tier) and their durations."""
    if fmt == "csv":
        safeio.write_csv(segments, path, float_format="%.6g")
    elif fmt == "rttm":
        safeio.write_text(path, to_rttm(segments))
    elif fmt == "textgrid":
        ok = report[report["status"] == "ok"]
        safeio.write_text(path, to_textgrid(segments, dict(zip(ok["path"], ok["duration_s"]))))
    else:
        raise ValueError(f"segments format {fmt!r}: expected one of {', '.join(FORMATS)}")
