#!/usr/bin/env python3
"""The house's layout rules, checked from the sources: no import circle between the files of a
crate, and no source file over 1,000 lines. Exits 1 naming what breaks a rule.

An import is any `crate::…`, `super::…` or `self::…` path, or a bare path into a child module
from a folder's `mod.rs`, outside `#[cfg(test)]` code (a test module may import its parent).
`pub use` re-exports (a folder's facade) and `mod` lines (its children) are not imports, and
neither is a path to the crate root, whose `lib.rs` only re-exports.

    python3 scripts/layout.py [REPO]     # default: the current directory
"""
import os
import re
import sys

CRATES = {'encoder': 'encoder/src', 'core': 'core/src', 'service': 'service/src',
          'trainer': 'trainer/src', 'mrl': 'src'}
MAX_LINES = 1000


def module_of(root, path):
    parts = os.path.relpath(path, root)[:-3].split(os.sep)
    return tuple(parts[:-1] if parts[-1] in ('mod', 'lib', 'main') else parts)


def import_graph(root):
    files = {}
    for d, _, names in os.walk(root):
        for n in names:
            if n.endswith('.rs'):
                p = os.path.join(d, n)
                files[module_of(root, p)] = p
    modules = set(files)

    def resolve(path):
        for k in range(len(path), -1, -1):
            if tuple(path[:k]) in modules:
                return tuple(path[:k])
        return None

    graph = {m: set() for m in modules}
    for m, p in files.items():
        src = open(p, encoding='utf-8').read().split('#[cfg(test)]')[0]
        # Names a folder re-exports from a child, used in its own code, import that child.
        reexported = re.findall(r'(?m)^\s*pub(?:\([^)]*\))? use (\w+)::\{?([\w, ]+)\}?;', src)
        src = re.sub(r'(?m)^\s*pub(\([^)]*\))? use [^;]*;', '', src)
        src = re.sub(r'(?m)^\s*(pub(\([^)]*\))? )?mod \w+;', '', src)
        folder = os.path.basename(p) in ('mod.rs', 'lib.rs', 'main.rs')
        for hit in re.finditer(r'\b(crate|super|self)((?:::\w+)+)', src):
            rest = [x for x in hit.group(2).split('::') if x]
            base = {'crate': [], 'super': list(m[:-1]), 'self': list(m)}[hit.group(1)]
            target = resolve(base + rest)
            if target not in (None, (), m):
                graph[m].add(target)
        if folder:
            for child, names in reexported:
                target = resolve(list(m) + [child])
                used = any(re.search(rf'\b{n.strip()}\b', src) for n in names.split(',') if n.strip())
                if target not in (None, m) and len(target) > len(m) and used:
                    graph[m].add(target)
        if folder and m != ():
            for hit in re.finditer(r'(?<![:\w])(\w+)((?:::\w+)+)', src):
                target = resolve(list(m) + [hit.group(1)] + hit.group(2).split('::')[1:])
                if target is not None and len(target) > len(m):
                    graph[m].add(target)
    return graph, files


def cycles(graph):
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
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
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def main():
    top = sys.argv[1] if len(sys.argv) > 1 else '.'
    broken = []
    for crate, root in CRATES.items():
        graph, files = import_graph(os.path.join(top, root))
        for comp in cycles(graph):
            broken.append(f"{crate}: import circle {' → '.join('::'.join(c) for c in comp)}")
        for p in files.values():
            n = sum(1 for _ in open(p, encoding='utf-8'))
            if n > MAX_LINES:
                broken.append(f"{p}: {n} lines (at most {MAX_LINES})")
    for b in broken:
        print(b)
    print(f"layout: {len(broken)} broken rule(s)")
    return 1 if broken else 0


if __name__ == '__main__':
    sys.exit(main())
