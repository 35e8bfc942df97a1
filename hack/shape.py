#!/usr/bin/env python3
"""shape.py - the code's shape, for reviews: the dependency graph between src/'s top-level modules
(and any cycle in it), and the functions longer than a limit (tests excluded).

Usage: hack/shape.py [LIMIT]   (default 120 lines)
Crude by design: it reads `crate::<module>` references and counts a function from its `fn` line
to the closing brace at the same indentation."""
import collections
import os
import re
import sys

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src")
LIMIT = int(sys.argv[1]) if len(sys.argv) > 1 else 120


def rust_files(path):
    if path.endswith(".rs"):
        return [path]
    return [os.path.join(d, f) for d, _, fs in os.walk(path) for f in fs if f.endswith(".rs")]


def without_tests(text):
    return re.split(r"#\[cfg\(test\)\]", text)[0]


mods = {}
for name in os.listdir(ROOT):
    if name in ("lib.rs", "main.rs", "bin", "cli"):
        continue
    mods[name[:-3] if name.endswith(".rs") else name] = os.path.join(ROOT, name)
edges = collections.defaultdict(set)
for m, path in mods.items():
    for f in rust_files(path):
        for t in re.findall(r"crate::(\w+)", without_tests(open(f).read())):
            if t != m and t in mods:
                edges[m].add(t)

index, low, stack, on, cycles, counter = {}, {}, [], set(), [], [0]


def strong(v):
    index[v] = low[v] = counter[0]
    counter[0] += 1
    stack.append(v)
    on.add(v)
    for w in edges[v]:
        if w not in index:
            strong(w)
            low[v] = min(low[v], low[w])
        elif w in on:
            low[v] = min(low[v], index[w])
    if low[v] == index[v]:
        scc = []
        while True:
            w = stack.pop()
            on.discard(w)
            scc.append(w)
            if w == v:
                break
        if len(scc) > 1:
            cycles.append(sorted(scc))


for v in sorted(mods):
    if v not in index:
        strong(v)
print(f"{len(mods)} modules, {sum(len(e) for e in edges.values())} dependencies")
for m in sorted(mods):
    print(f"  {m} -> {', '.join(sorted(edges[m])) or '(leaf)'}")
print("cycles:", cycles or "none")

long = []
for f in rust_files(ROOT):
    lines = without_tests(open(f).read()).split("\n")
    for i, line in enumerate(lines):
        m = re.match(r"^(\s*)(pub(\([^)]*\))?\s+)?(const\s+)?(async\s+)?(unsafe\s+)?fn\s+(\w+)", line)
        if not m:
            continue
        indent = m.group(1)
        for j in range(i + 1, len(lines)):
            if lines[j].startswith(indent + "}") and not lines[j].startswith(indent + "} else"):
                if j - i + 1 > LIMIT:
                    long.append((j - i + 1, os.path.relpath(f, ROOT), m.group(7)))
                break
print(f"functions over {LIMIT} lines:", len(long))
for n, f, name in sorted(long, reverse=True):
    print(f"  {n:4} {f}::{name}")
