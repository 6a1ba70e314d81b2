#!/usr/bin/env python3
"""Checks that the docs name only what exists, so that they cannot drift from the code.

Reads README.md and docs/*.md (code blocks included) and checks:

- every project path they name (`src/session/flow.rs`, `deploy/systemd/`, `scripts/bench.sh`,
  `config/zen-server.toml`, `.ci/run`, ...) exists;
- every module they name as `zen_server::a::b` is a module of the library (src/a/b.rs or
  src/a/b/mod.rs), up to its first item (a name in CamelCase);
- every link to a file of the project, and every `#anchor`, leads to a heading that exists;
- the table of each actor's messages in docs/architecture.md lists exactly the `Handler<_>` and
  `StreamHandler<_>` implementations of every actor of the library (its tests left out);
- every default in a settings table of docs/operations.md (a row `| \`key\` | \`default\` | ...`)
  is the value config/zen-server.toml gives that key;
- every log message quoted in the table of log events in docs/operations.md is one the source
  logs (a string literal of src/).

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


ACTOR_TABLE_HEADING = "### Each actor's messages"
HANDLER_ROW = re.compile(r"^\| `(\w+)`[^|]*\|[^|]*\|(.*)\|\s*$")


def handler_impls(root: Path) -> dict[str, set[str]]:
    """Every actor of the library's sources and its handlers, as `Handler<M>` or `StreamHandler<M>`."""
    found: dict[str, set[str]] = {}
    for source in sorted((root / "src").rglob("*.rs")):
        if source.name == "tests.rs" or "bin" in source.relative_to(root / "src").parts:
            continue
        text = source.read_text()
        text = text.split("#[cfg(test)]\nmod tests", 1)[0]
        for match in re.finditer(r"\bimpl(?:<[^>]*>)?\s+((?:Stream)?Handler)<", text):
            depth, end = 1, match.end()
            while depth and end < len(text):
                depth += {"<": 1, ">": -1}.get(text[end], 0)
                end += 1
            message = " ".join(text[match.end() : end - 1].split())
            actor = re.match(r"\s+for\s+(\w+)", text[end:])
            if actor:
                found.setdefault(actor.group(1), set()).add(f"{match.group(1)}<{message}>")
    return found


def check_actor_table(root: Path) -> list[str]:
    """The table of each actor's messages against the handlers in the code."""
    document = root / "docs" / "architecture.md"
    lines = document.read_text().splitlines()
    if ACTOR_TABLE_HEADING not in lines:
        return [f"docs/architecture.md: no section {ACTOR_TABLE_HEADING!r}"]
    listed: dict[str, tuple[int, set[str]]] = {}
    for number, line in enumerate(lines[lines.index(ACTOR_TABLE_HEADING) :], lines.index(ACTOR_TABLE_HEADING) + 1):
        if line.startswith("#") and number > lines.index(ACTOR_TABLE_HEADING) + 1:
            break
        if (row := HANDLER_ROW.match(line)) and row.group(1) != "actor":
            listed[row.group(1)] = (number, set(re.findall(r"`([^`]+)`", row.group(2))))
    problems = []
    code = handler_impls(root)
    for actor, handlers in sorted(code.items()):
        if actor not in listed:
            problems.append(f"docs/architecture.md: the actor {actor} ({', '.join(sorted(handlers))}) is not in the table")
            continue
        number, documented = listed[actor]
        for missing in sorted(handlers - documented):
            problems.append(f"docs/architecture.md:{number}: {actor} implements {missing}, which the table omits")
        for extra in sorted(documented - handlers):
            problems.append(f"docs/architecture.md:{number}: {actor} has no {extra}")
    for actor, (number, _) in sorted(listed.items()):
        if actor not in code:
            problems.append(f"docs/architecture.md:{number}: {actor} is no actor of the library")
    return problems


def settings_file(root: Path) -> dict:
    import tomllib

    return tomllib.loads((root / "config" / "zen-server.toml").read_text())


def check_defaults(root: Path) -> list[str]:
    """Each default in the settings tables of docs/operations.md against config/zen-server.toml."""
    import tomllib

    settings, problems = settings_file(root), []
    section = None
    for number, line in enumerate((root / "docs" / "operations.md").read_text().splitlines(), 1):
        if line.startswith("## "):
            # The limits table names its keys without their section.
            section = "limits" if line.startswith("## Limits") else None
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) < 3 or not cells[0].startswith("`") or not cells[1].startswith("`"):
            continue
        keys = re.findall(r"`([a-z_.]+)`", cells[0])
        # A default such as `""` (off): the value in backticks; several keys, several values.
        defaults = re.findall(r"`([^`]*)`", cells[1])
        if len(keys) != len(defaults) or any("*" in key for key in keys):
            continue
        for key, default in zip(keys, defaults):
            path = key.split(".") if "." in key else [section or "", key]
            value = settings
            for part in path:
                value = value.get(part) if isinstance(value, dict) else None
            try:
                documented = tomllib.loads(f"value = {default}")["value"]
            except tomllib.TOMLDecodeError:
                documented = default
            if value is None:
                problems.append(f"docs/operations.md:{number}: {'.'.join(path)} is no key of config/zen-server.toml")
            elif documented != value:
                problems.append(
                    f"docs/operations.md:{number}: {'.'.join(path)} defaults to {default}, but config/zen-server.toml gives {value!r}"
                )
    return problems


LOG_HEADING = "## The log"


def check_log_messages(root: Path) -> list[str]:
    """Each message of the table of log events in docs/operations.md against the source's strings."""
    literals = set()
    for source in (root / "src").rglob("*.rs"):
        literals.update(re.findall(r'"((?:[^"\\]|\\.)*)"', source.read_text()))
    lines = (root / "docs" / "operations.md").read_text().splitlines()
    if LOG_HEADING not in lines:
        return [f"docs/operations.md: no section {LOG_HEADING!r}"]
    problems, start = [], lines.index(LOG_HEADING)
    for number, line in enumerate(lines[start + 1 :], start + 2):
        if line.startswith("## "):
            break
        if not line.startswith("| `"):
            continue
        for message in re.findall(r"`([^`]+)`", line.split("|")[1]):
            if message not in literals:
                problems.append(f"docs/operations.md:{number}: the log says no {message!r}")
    return problems


def main() -> int:
    root = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).resolve().parent.parent)
    problems = check(root) + check_actor_table(root) + check_defaults(root) + check_log_messages(root)
    for problem in problems:
        print(problem)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
