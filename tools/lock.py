"""The lock: the exact package versions the test suite passed with, one constraints file per machine kind.

    python tools/lock.py kind                    # this machine's kind, e.g. linux-x86_64-py311-cpu
    python tools/lock.py write requirements/lock-KIND.txt   # pip freeze of this environment, with a header
    python tools/lock.py diff requirements/lock-KIND.txt    # what this environment has that the lock does not

`make lock` writes one from a scratch environment holding the newest versions pyproject.toml allows; `make run` and
`make test` install through it (`pip install -c LOCK ...`); `make test-latest` installs the newest versions again and
`diff` says which moved. The file is a pip constraints file: `name==version` lines, `#` comments.
"""

from __future__ import annotations

import argparse
import platform
import re
import shutil
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

_LINE = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)$")


def canonical(name: str) -> str:
    """PEP 503 name: lower case, runs of `-_.` as one `-` (`Typing_Extensions` -> `typing-extensions`)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def machine_kind(has_cuda: bool | None = None) -> str:
    """`os-arch-pyXY-{cpu,cuda}`: what decides which wheels pip picks (the torch build above all)."""
    if has_cuda is None:
        has_cuda = shutil.which("nvidia-smi") is not None
    py = f"py{sys.version_info[0]}{sys.version_info[1]}"
    return f"{platform.system().lower()}-{platform.machine()}-{py}-{'cuda' if has_cuda else 'cpu'}"


def parse(text: str) -> dict[str, str]:
    """`{canonical name: version}` from constraints text; comments, blank lines and options are skipped."""
    pins: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        match = _LINE.match(line)
        if match:
            pins[canonical(match.group(1))] = match.group(2)
    return pins


def frozen() -> dict[str, str]:
    """This interpreter's installed distributions as pip freeze sees them (editable installs left out)."""
    out = subprocess.run(
        [sys.executable, "-m", "pip", "freeze", "--exclude-editable"], check=True, capture_output=True, text=True
    ).stdout
    return parse(out)


def render(pins: dict[str, str], kind: str, note: str = "") -> str:
    """The lock file's text: a header saying what it is and how to refresh it, then one sorted pin a line. `note`,
    when given, says which environment it is and how it is installed, in place of the main lock's lines."""
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d")
    if note:
        head = [f"# fastslow lock for {kind} ({when}): {note}."]
    else:
        head = [
            f"# fastslow lock for {kind}: the versions `make test` passed with ({when}).",
            "# Written by `make lock`; `make run` and `make test` install through it (pip -c).",
            "# Refresh: make lock && make test, then commit this file. Ranges for a hand install stay in "
            "pyproject.toml.",
        ]
    return "\n".join(head + [f"{name}=={pins[name]}" for name in sorted(pins)]) + "\n"


def diff(locked: dict[str, str], now: dict[str, str]) -> list[str]:
    """One line per package whose version differs: moved, new (not in the lock) or gone (locked, not installed)."""
    lines = []
    for name in sorted(set(locked) | set(now)):
        old, new = locked.get(name), now.get(name)
        if old == new:
            continue
        if old is None:
            lines.append(f"new:   {name} {new}")
        elif new is None:
            lines.append(f"gone:  {name} {old}")
        else:
            lines.append(f"moved: {name} {old} -> {new}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tools/lock.py", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("kind", help="print this machine's kind")
    write = sub.add_parser("write", help="write this environment's versions as the lock")
    write.add_argument("path", type=Path)
    write.add_argument("--note", default="")
    check = sub.add_parser("diff", help="list what this environment has that differs from the lock")
    check.add_argument("path", type=Path)
    args = parser.parse_args(argv)
    if args.cmd == "kind":
        print(machine_kind())
        return 0
    if args.cmd == "write":
        args.path.parent.mkdir(parents=True, exist_ok=True)
        pins = frozen()
        args.path.write_text(render(pins, machine_kind(), args.note), encoding="utf-8")
        print(f"lock: wrote {len(pins)} pins to {args.path}")
        return 0
    if not args.path.is_file():
        print(f"lock: no lock at {args.path} to compare with ('make lock' writes one)")
        return 0
    lines = diff(parse(args.path.read_text(encoding="utf-8")), frozen())
    print(f"lock: {len(lines)} package(s) differ from {args.path}" + (":" if lines else " (the newest are the locked)"))
    for line in lines:
        print("  " + line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
