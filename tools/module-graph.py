#!/usr/bin/env python3
"""The import graph of a crate's modules, read from its source: which module names which
(`crate::a::b`, `super::x`, `use crate::{a, b}`), every import circle among them, and every
module that imports the command layer.

    tools/module-graph.py [SRC_DIR] [--top MODULE] [--dot | --rooms]

SRC_DIR defaults to trainer/src. `--top` names the command layer (default `commands`): only
the crate root (main.rs) may import it. Exits 1 when there is a circle or a module other than
the root imports the top, 0 otherwise; `--dot` prints the graph for Graphviz instead, `--rooms`
the rooms (top-level modules) each room imports.
"""
import re
import sys
from pathlib import Path


def module_of(src: Path, file: Path) -> tuple:
    parts = list(file.relative_to(src).with_suffix("").parts)
    if parts[-1] in ("mod", "main", "lib"):
        parts = parts[:-1]
    return tuple(parts)


def strip_comments(text: str) -> str:
    """The code without comments, string literals and character literals (which can hold
    `crate::` or `//` in messages)."""
    out, i, n = [], 0, len(text)
    char = re.compile(r"'(\\.[^']*|[^\\'])'")
    while i < n:
        c = text[i]
        if text.startswith("//", i):
            j = text.find("\n", i)
            i = n if j < 0 else j
        elif text.startswith("/*", i):
            j = text.find("*/", i + 2)
            i = n if j < 0 else j + 2
        elif c == "r" and re.match(r'r#*"', text[i:]) and (i == 0 or not text[i - 1].isalnum()):
            hashes = re.match(r'r(#*)"', text[i:]).group(1)
            j = text.find('"' + hashes, i + len(hashes) + 2)
            i = n if j < 0 else j + 1 + len(hashes)
            out.append('""')
        elif c == '"':
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            i = j + 1
            out.append('""')
        elif c == "'" and char.match(text, i):
            i = char.match(text, i).end()
            out.append("' '")
        else:
            out.append(c)
            i += 1
    return "".join(out)


def paths_in(text: str):
    """Every path that starts at `crate::` or `super::`, with brace groups expanded."""
    for m in re.finditer(r"\b(crate|super)((?:::(?:super|\w+))*)::\{", text):
        depth, i, start = 1, m.end(), m.end()
        while depth and i < len(text):
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        inner = text[start : i - 1]
        # Only the first level of the group matters for which module is named.
        level, item = 0, ""
        for ch in inner + ",":
            if ch == "{":
                level += 1
            elif ch == "}":
                level -= 1
            if ch == "," and level == 0:
                head = re.match(r"\s*((?:\w+::)*\w+)", item)
                if head:
                    yield m.group(1) + m.group(2) + "::" + head.group(1)
                item = ""
            elif level == 0 or ch not in "{}":
                item += ch if level == 0 else ""
    for m in re.finditer(r"\b(crate|super)((?:::(?:super|\w+))+)", text):
        yield m.group(1) + m.group(2)


def resolve(path: str, here: tuple, modules: set):
    parts = path.split("::")
    if parts[0] == "crate":
        base, rest = (), parts[1:]
    else:
        # `super` of module a::b (file `a/b.rs` or `a/b/mod.rs`) is a.
        base = here[:-1]
        rest = parts[1:]
        while rest and rest[0] == "super":
            base, rest = base[:-1], rest[1:]
    target = base
    for p in rest:
        if target + (p,) in modules:
            target = target + (p,)
        else:
            break
    return target or None


def main():
    args = sys.argv[1:]
    dot = "--dot" in args
    rooms = "--rooms" in args
    top = "commands"
    if "--top" in args:
        top = args[args.index("--top") + 1]
        del args[args.index("--top") : args.index("--top") + 2]
    args = [a for a in args if a not in ("--dot", "--rooms")]
    src = Path(args[0] if args else "trainer/src")
    files = {module_of(src, f): f for f in sorted(src.rglob("*.rs"))}
    modules = set(files)
    edges = {m: set() for m in modules}
    for here, f in files.items():
        text = strip_comments(f.read_text())
        for p in paths_in(text):
            t = resolve(p, here, modules)
            if t and t in modules and t != here:
                edges[here].add(t)
        # Paths that start at a child module declared here (`mod x;` ... `x::f()`). The root's
        # declarations are the crate's rooms, not imports.
        if here:
            for child in re.findall(r"\bmod\s+(\w+)\s*;", text):
                if re.search(rf"(?<![\w:]){child}::", text):
                    edges[here].add(here + (child,))
    name = lambda m: "::".join(m) or "crate"
    if rooms:
        # Each room (top-level module) and the rooms it imports.
        by_room = {}
        for a, targets in edges.items():
            if a:
                by_room.setdefault(a[0], set()).update(b[0] for b in targets if b and b[0] != a[0])
        for r in sorted(by_room):
            print(f"{r} -> {', '.join(sorted(by_room[r])) or '(nothing)'}")
        return 0
    if dot:
        print("digraph modules {")
        for a in sorted(edges):
            for b in sorted(edges[a]):
                print(f'  "{name(a)}" -> "{name(b)}";')
        print("}")
        return 0
    # Circles: strongly connected components of more than one module (Tarjan).
    index, low, stack, on, comps, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                comps.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in sorted(modules):
        if v not in index:
            visit(v)
    bad = 0
    top_users = sorted(m for m in modules if (top,) in edges[m] and m != ())
    for m in top_users:
        print(f"{name(m)} imports the command layer `{top}`")
        bad += 1
    for comp in comps:
        print(f"import circle of {len(comp)} modules: {', '.join(name(m) for m in comp)}")
        inside = set(comp)
        for a in comp:
            for b in sorted(edges[a] & inside):
                print(f"    {name(a)} -> {name(b)}")
        bad += 1
    n_edges = sum(len(e) for e in edges.values())
    print(f"{len(modules)} modules, {n_edges} imports, {len(comps)} circles, "
          f"{len(top_users)} modules importing `{top}` besides the root")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
