"""Turn a pytest-benchmark JSON of this suite into markdown tables with the ratios to ours.

    python -m bench.report RESULTS.json [-o OUT.md]

Prints (and with `-o` also writes) a header with the device, versions, date and measured ceilings; a ratio table
(each baseline's median time over ours: above 1 means ours is faster, beside ours' time and rate); and one table
per (group, mode, shape, dtype) with each provider's median time and spread, peak extra memory, achieved TFLOP/s
or GB/s (tokens/s for a training step, which has no ceiling), its fraction of the device's ceiling, the ratio to
ours, and the check value (the loss, or a checksum, that shows the providers computed the same thing). Needs only
the standard library.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

PROVIDER_ORDER = (
    "ours",
    "ours_torch",
    "reference",
    "eager",
    "compiled",
    "liger",
    "foreach_lerp",
    "seed_loop",
    "dcp_full_state_dict",
    "unsharded_load_state_dict",
)
"""Column and row order. Other `ours_*` variants (e.g. `ours_bucket1gib`) come right after `ours_torch`, any other
provider last, by name."""
MiB = 1 << 20

Row = dict[str, Any]
Key = tuple[str, str, str, str]  # (group, mode, shape, dtype)


def load_rows(data: dict[str, Any]) -> list[Row]:
    """The `extra_info` of every benchmark that has this suite's fields, with the test name added."""
    rows = []
    for bench in data.get("benchmarks", []):
        info = dict(bench.get("extra_info") or {})
        if "provider" not in info or "median_ms" not in info:
            continue
        info.setdefault("name", bench.get("name", ""))
        info.setdefault("group", bench.get("group") or "")
        rows.append(info)
    return rows


def group_rows(rows: Sequence[Row]) -> dict[Key, list[Row]]:
    """Rows by (group, mode, shape, dtype), in order of first appearance; providers in the suite's order."""
    groups: dict[Key, list[Row]] = {}
    for r in rows:
        key = (str(r["group"]), str(r.get("mode", "")), str(r.get("shape", "")), str(r.get("dtype", "")))
        groups.setdefault(key, []).append(r)
    for members in groups.values():
        members.sort(key=lambda r: provider_rank(r["provider"]))
    return groups


def provider_rank(provider: str) -> tuple[float, str]:
    """Sort key of a provider: its place in `PROVIDER_ORDER`, `ours_*` variants after `ours_torch`, others last."""
    if provider in PROVIDER_ORDER:
        return float(PROVIDER_ORDER.index(provider)), provider
    if provider.startswith("ours"):
        return PROVIDER_ORDER.index("ours_torch") + 0.5, provider
    return float(len(PROVIDER_ORDER)), provider


def _ms(x: float) -> str:
    if x >= 100:
        return f"{x:.0f}"
    if x >= 10:
        return f"{x:.1f}"
    if x >= 1:
        return f"{x:.2f}"
    return f"{x:.3f}"


def _mib(b: float | None) -> str:
    if b is None:
        return "n/a"
    return f"{b / MiB:.1f}" if b < 100 * MiB else f"{b / MiB:,.0f}"


def _ratio(t: float, ours: float | None) -> str:
    return "" if ours is None or ours <= 0 else f"{t / ours:.2f}x"


def _rate(x: float | None) -> str:
    """TFLOP/s, GB/s or tokens/s: 3 significant digits, whole numbers with separators from 1000 up."""
    if x is None:
        return ""
    return f"{x:,.0f}" if abs(x) >= 1000 else f"{x:.3g}"


def _ours(members: Sequence[Row]) -> Row | None:
    """The row the others are compared with: "ours", or in the packed-vs-padded step group, "packed"."""
    return next((r for r in members if r["provider"] == "ours"), None) or next(
        (r for r in members if r["provider"] == "packed"), None
    )


def _ours_ms(members: Sequence[Row]) -> float | None:
    ours = _ours(members)
    return None if ours is None else float(ours["median_ms"])


def header(data: dict[str, Any], rows: Sequence[Row]) -> list[str]:
    first = rows[0] if rows else {}
    dev = data.get("machine_info", {}).get("device_info") or first
    ceil = first.get("ceilings", {})
    commit = data.get("commit_info", {})
    lines = [
        f"# fastslow kernel benchmarks: {dev.get('device', '?')}",
        "",
        f"- device: {dev.get('device', '?')} ({dev.get('device_type', '?')}"
        + (f", CUDA {dev['cuda']}" if dev.get("cuda") else "")
        + (f", {dev['cpu_threads']} threads" if dev.get("cpu_threads") else "")
        + ")",
        f"- versions: torch {dev.get('torch')}, triton {dev.get('triton')}, liger-kernel {dev.get('liger_kernel')}, "
        f"python {dev.get('python')}",
        f"- date: {dev.get('date') or data.get('datetime', '?')}",
    ]
    if commit.get("id"):
        lines.append(f"- commit: {commit['id'][:12]}{' (dirty)' if commit.get('dirty') else ''}")
    if ceil:
        lines.append(
            f"- measured ceilings: matmul {ceil.get('matmul_tflops', 0):.3g} TFLOP/s "
            f"({int(ceil.get('matmul_shape', 0))}^3), copy {ceil.get('copy_gbps', 0):.4g} GB/s "
            f"({ceil.get('copy_bytes', 0) / MiB:.0f} MiB, read + write)"
        )
    timer = {r.get("timer") for r in rows if r.get("timer")}
    if timer:
        lines.append(f"- median time from: {', '.join(sorted(timer))}; spread is p20-p80")
    lines.append("")
    return lines


def ratio_table(groups: dict[Key, list[Row]]) -> list[str]:
    """One line per case: each baseline's median time / ours (above 1: ours is faster)."""
    seen = {r["provider"] for m in groups.values() for r in m} - {"ours", "packed"}
    cols = sorted(seen, key=provider_rank)
    lines = [
        "## Ratios: baseline median time / ours (above 1: ours is faster)",
        "",
        "| case | ours ms | ours rate | " + " | ".join(cols) + " |",
        "|---|---:|---:|" + "---:|" * len(cols),
    ]
    for (group, mode, shape, dtype), members in groups.items():
        ours_row = _ours(members)
        ours = _ours_ms(members)
        rate = "-"
        if ours_row is not None and ours_row.get("rate") is not None:
            rate = f"{_rate(ours_row['rate'])} {ours_row.get('rate_unit', '')}".strip()
        by = {r["provider"]: float(r["median_ms"]) for r in members}
        cells = [(_ratio(by[p], ours) or "-") if p in by else "-" for p in cols]
        lines.append(
            f"| {group} {mode} {shape} {dtype} | {_ms(ours) if ours is not None else '-'} | {rate} | "
            + " | ".join(cells)
            + " |"
        )
    lines.append("")
    return lines


def case_table(key: Key, members: Sequence[Row]) -> list[str]:
    group, mode, shape, dtype = key
    ours = _ours_ms(members)
    unit = next((r.get("rate_unit") for r in members if r.get("rate_unit")), None)
    ceiling = next((r.get("ceiling") for r in members if r.get("ceiling")), None)
    lines = [
        f"### {group} · {mode} · {shape} · {dtype}",
        "",
        f"| provider | median ms (p20-p80) | peak extra MiB | {unit or 'rate'} | "
        f"{f'% of {ceiling} ceiling' if ceiling else '% of ceiling'} | time / ours | check |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in members:
        t = float(r["median_ms"])
        spread = f"{_ms(t)} ({_ms(float(r.get('p20_ms', t)))}-{_ms(float(r.get('p80_ms', t)))})"
        rate = _rate(r.get("rate"))
        frac = f"{100 * r['fraction_of_ceiling']:.1f}%" if r.get("fraction_of_ceiling") is not None else ""
        check = f"{r['check']:.6g}" if r.get("check") is not None else ""
        provider = r["provider"] + (f" ({r['backend']})" if r.get("backend") else "")
        lines.append(
            f"| {provider} | {spread} | {_mib(r.get('peak_extra_bytes'))} | {rate} | {frac} | {_ratio(t, ours)} "
            f"| {check} |"
        )
    lines.append("")
    return lines


def render(data: dict[str, Any]) -> str:
    """The whole markdown report for one pytest-benchmark JSON."""
    rows = load_rows(data)
    lines = header(data, rows)
    if not rows:
        lines.append("No benchmark rows with this suite's extra_info were found.")
        return "\n".join(lines) + "\n"
    groups = group_rows(rows)
    lines += ratio_table(groups)
    lines += ["## Details", ""]
    if any(r.get("peak_extra_bytes") is None for r in rows):
        lines += [
            "Peak extra memory is measured on CUDA only (n/a on the CPU: tests/test_linear_grpo.py checks the "
            "chunked CPU path's memory). Providers missing from a table were skipped; pytest's output gives why.",
            "",
        ]
    for key, members in groups.items():
        lines += case_table(key, members)
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("results", type=Path, help="pytest-benchmark JSON (--benchmark-json)")
    parser.add_argument("-o", "--output", type=Path, help="also write the markdown here")
    args = parser.parse_args(argv)
    data = json.loads(args.results.read_text())
    text = render(data)
    sys.stdout.write(text)
    if args.output is not None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
