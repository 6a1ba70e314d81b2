#!/usr/bin/env python3
"""Checks that no module of the library imports one that imports it back.

Every file under src/ (binaries excluded) is a module: src/session/flow.rs is `session::flow`,
src/session/mod.rs is `session`. A module depends on another when its code (comments aside)
names it by path: `crate::oracle::Ask`, `super::registry`, `self::flow::Flow`, or `mod flow;`.
The dependency graph must have no cycle; each cycle found is printed and the exit code is 1.

    scripts/check_module_cycles.py [SRC_DIR]
"""

import re
import sys
from pathlib import Path

PATH = re.compile(r"\b(crate|super|self)((?:::[a-z_][a-z0-9_]*)+)")
USE = re.compile(r"\buse\s+([^;]*);")
MOD = re.compile(r"^\s*(?:pub(?:\([a-z]+\))?\s+)?mod\s+([a-z_][a-z0-9_]*)\s*;", re.M)


def module_of(path: Path, src: Path) -> tuple[str, ...]:
    parts = list(path.relative_to(src).with_suffix("").parts)
    if parts[-1] in ("mod", "lib"):
        parts.pop()
    return tuple(parts)


def use_paths(tree: str, prefix: str = "") -> list[str]:
    """Flattens a use tree such as `crate::{a::B, c::{d, e}}` into `crate::a::B`, ..."""
    tree = tree.strip()
    if not tree:
        return []
    depth, parts, start = 0, [], 0
    for i, char in enumerate(tree):
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
        elif char == "," and depth == 0:
            parts.append(tree[start:i])
            start = i + 1
    parts.append(tree[start:])
    if len(parts) > 1:
        return [path for part in parts for path in use_paths(part, prefix)]
    brace = tree.find("{")
    if brace == -1:
        return [prefix + tree.split(" as ")[0].strip()]
    head = tree[:brace].strip()
    return use_paths(tree[brace + 1 : tree.rindex("}")], prefix + head)


def code_only(text: str) -> str:
    return "\n".join(line.split("//", 1)[0] for line in text.splitlines())


def main() -> int:
    src = Path(sys.argv[1] if len(sys.argv) > 1 else "src")
    files = [p for p in src.rglob("*.rs") if "bin" not in p.relative_to(src).parts]
    modules = {module_of(p, src): p for p in files}
    graph: dict[tuple[str, ...], set[tuple[str, ...]]] = {m: set() for m in modules}

    def resolve(target: tuple[str, ...]) -> tuple[str, ...] | None:
        # The longest prefix of the path that is a module of ours.
        for end in range(len(target), 0, -1):
            if target[:end] in modules:
                return target[:end]
        return None

    for module, path in modules.items():
        text = code_only(path.read_text())
        is_dir_module = path.name in ("mod.rs", "lib.rs")
        here = module if is_dir_module else module[:-1]  # where `self::`/`mod x;` resolve from
        for name in MOD.findall(text):
            graph[module].add(here + (name,) if is_dir_module else module + (name,))
        paths = [p for tree in USE.findall(text) for p in use_paths(re.sub(r"\s+", "", tree))]
        found = PATH.findall(text) + [m for p in paths for m in PATH.findall(p)]
        for root, rest in found:
            names = tuple(rest.strip(":").split("::"))
            if root == "crate":
                base: tuple[str, ...] = ()
            elif root == "self":
                base = module
            else:  # super
                base = module[:-1]
            target = resolve(base + names)
            if target is not None and target != module:
                graph[module].add(target)

    cycles = []
    state: dict[tuple[str, ...], int] = {}
    stack: list[tuple[str, ...]] = []

    def visit(node: tuple[str, ...]) -> None:
        state[node] = 1
        stack.append(node)
        for next_node in sorted(graph.get(node, ())):
            if state.get(next_node) == 1:
                cycles.append(stack[stack.index(next_node):] + [next_node])
            elif next_node not in state:
                visit(next_node)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)

    name = lambda m: "::".join(m) or "crate"  # noqa: E731
    for cycle in cycles:
        print("module cycle: " + " -> ".join(name(m) for m in cycle), file=sys.stderr)
    if not cycles:
        print(f"module dependencies: {len(modules)} modules, no cycle")
    return 1 if cycles else 0


if __name__ == "__main__":
    sys.exit(main())
