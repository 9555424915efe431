"""The chart README's parameter table, generated from the ``## @section``/``## @param`` lines of values.yaml.

    python -m cutalign.k8s.chart_docs charts/cutalign           # rewrite the table in its README.md
    python -m cutalign.k8s.chart_docs charts/cutalign --check   # exit 1 if it is stale (a test does the same)

The table sits between ``<!-- parameters:start -->`` and ``<!-- parameters:end -->``: one sub-table per
section, a row per parameter with its description and its default as values.yaml has it.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

import yaml

START, END = "<!-- parameters:start -->", "<!-- parameters:end -->"
_SECTION = re.compile(r"^\s*## @section (.+)$")
_PARAM = re.compile(r"^\s*## @param (\S+) ?(.*)$")


def _default(values: dict[str, Any], path: str) -> str:
    node: Any = values
    for key in path.split("."):
        node = node[key]
    text = json.dumps(node, separators=(", ", ": "))
    return f"`{text if len(text) <= 60 else text[:57] + '...'}`".replace("|", "\\|")


def parameter_table(values_yaml: str) -> str:
    """Markdown: a heading and a table per ``@section``, a row per ``@param``."""
    values = yaml.safe_load(values_yaml)
    out: list[str] = []
    for line in values_yaml.splitlines():
        if section := _SECTION.match(line):
            out += ["", f"### {section.group(1)}", "", "| parameter | description | default |"]
            out.append("|---|---|---|")
        elif param := _PARAM.match(line):
            path, description = param.groups()
            out.append(f"| `{path}` | {description.replace('|', chr(92) + '|')} | {_default(values, path)} |")
    return "\n".join(out).strip() + "\n"


def render_readme(readme: str, values_yaml: str) -> str:
    if START not in readme or END not in readme:
        raise ValueError(f"the chart README has no {START} ... {END} block to fill")
    head, rest = readme.split(START, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{START}\n{parameter_table(values_yaml)}{END}{tail}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("chart", type=Path, help="The chart directory (values.yaml, README.md).")
    parser.add_argument("--check", action="store_true", help="Only report whether the table is stale.")
    args = parser.parse_args(argv)
    readme_path = args.chart / "README.md"
    readme = readme_path.read_text()
    fresh = render_readme(readme, (args.chart / "values.yaml").read_text())
    if args.check:
        if fresh != readme:
            print(f"{readme_path}: the parameter table is stale; run `make chart-docs`", file=sys.stderr)
            return 1
        return 0
    readme_path.write_text(fresh)
    return 0


if __name__ == "__main__":
    sys.exit(main())
