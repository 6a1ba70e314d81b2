#!/usr/bin/env python3
"""Checks that the docs name only what exists, so that they cannot drift from the code.

Reads README.md and docs/*.md (code blocks included) and checks:

- every project path they name (`src/session/flow.rs`, `deploy/systemd/`, `scripts/bench.sh`,
  `config/zen-server.toml`, `.ci/run`, ...) exists;
- every module they name as `zen_server::a::b` is a module of the library (src/a/b.rs or
  src/a/b/mod.rs), up to its first item (a name in CamelCase);
- every link to a file of the project, and every `#anchor`, leads to a heading that exists.

Each problem is printed with the document and line; the exit code is 1 if there is any.

    scripts/check_docs.py [ROOT]
"""

import re
import sys
from pathlib import Path

# A project path: one of the tree's top-level entries, then more of the path.
TOP = ("src", "tests", "deploy", "scripts", "config", "docs", "bench", "examples", "fuzz", ".ci")
PATH = re.compile(r"(?<![\w./-])((?:%s)/[\w./-]*|Dockerfile|Cargo\.toml|build\.rs)" % "|".join(re.escape(t) for t in TOP))
MODULE = re.compile(r"\bzen_server((?:::[A-Za-z_][A-Za-z0-9_]*)+)")
LINK = re.compile(r"\]\(([^)\s]+)\)")
HEADING = re.compile(r"^#{1,6} (.*)$")


def anchors(text: str) -> set[str]:
    """The anchors of a Markdown text's headings, as GitHub makes them."""
    found, fence = set(), False
    for line in text.splitlines():
        if line.startswith("```"):
            fence = not fence
        elif not fence and (match := HEADING.match(line)):
            anchor = re.sub(r"[^\w\- ]", "", match.group(1).strip().lower()).replace(" ", "-")
            found.add(anchor)
    return found


def module_exists(root: Path, segments: list[str]) -> bool:
    """Whether `zen_server::segments` names a module, or an item of one (after the modules)."""
    path = root / "src"
    for index, segment in enumerate(segments):
        if (path / f"{segment}.rs").exists() or (path / segment / "mod.rs").exists():
            path = path / segment
            continue
        # Not a module: an item (a type, a function, a constant) of the modules named so far.
        return index > 0
    return True


def check(root: Path) -> list[str]:
    problems = []
    documents = [root / "README.md", *sorted((root / "docs").glob("*.md"))]
    for document in documents:
        text = document.read_text()
        name = document.relative_to(root)
        for number, line in enumerate(text.splitlines(), 1):
            for match in PATH.finditer(line):
                path = match.group(1).rstrip(".,:;)")
                if not (root / path).exists():
                    problems.append(f"{name}:{number}: {path} does not exist")
            for match in MODULE.finditer(line):
                segments = match.group(1).strip(":").split("::")
                if not module_exists(root, segments):
                    problems.append(f"{name}:{number}: zen_server::{'::'.join(segments)} is no module")
            for match in LINK.finditer(line):
                link = match.group(1)
                if re.match(r"^[a-z]+:", link):
                    continue
                file, _, anchor = link.partition("#")
                target = (document.parent / file).resolve() if file else document
                if not target.exists():
                    problems.append(f"{name}:{number}: the link to {link} leads nowhere")
                elif anchor and target.suffix == ".md" and anchor not in anchors(target.read_text()):
                    problems.append(f"{name}:{number}: {target.name} has no heading #{anchor}")
    return problems


def main() -> int:
    root = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).resolve().parent.parent)
    problems = check(root)
    for problem in problems:
        print(problem)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
