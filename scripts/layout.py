#!/usr/bin/env python3
"""The house's layout rules, checked from the sources: no import circle between the files of a
crate, no source file over 1,000 lines, no doc citing a path that is not there, and no module
docs/architecture.md does not name. Exits 1 naming what breaks a rule.

An import is any `crate::…`, `super::…` or `self::…` path, or a bare path into a child module
from a folder's `mod.rs`, outside `#[cfg(test)]` code (a test module may import its parent).
`pub use` re-exports (a folder's facade) and `mod` lines (its children) are not imports, and
neither is a path to the crate root, whose `lib.rs` only re-exports.

Cited paths. README.md, docs/*.md and the comments of configs/*.toml cite repository paths;
each must exist (a folder counts). A cited path is
- in Markdown: a whitespace-separated word of a `backticked` span or of a code block (fenced,
  or indented four spaces after a blank line), or a link target `[text](target)`;
- in TOML: a whitespace-separated word of a comment (after `#`);
with quotes, brackets, `$(`, a leading `--flag=`/`VAR=`, a `#anchor`, a `:line` or `:a-b`
suffix and trailing punctuation stripped, that starts with one of the repository's top-level
folders (TOP_DIRS: `src/`, `encoder/`, `core/`, …) or is one of its top-level files
(TOP_FILES). A link target is any relative target (not `http…`, `mailto:`), resolved from the
linking file's own folder; a link to a Markdown file's `#anchor` (or to `#anchor` in the same
file) must also name one of its headings (GitHub's slug). Skipped as placeholders or outputs:
words with `*`, `<`, `>`, `{`, `}`, `…` or `...`, a path component that is an upper-case
placeholder (`NAME`, `DIR`, `NAME.index.json`; not README), `../shared/…`, and `models/…`
other than `models/mrl-minilm-elastic` (the only model committed); `runs/`, `target/` and
`data/` are not top-level folders of the repository, so never checked.

Named modules. Every Rust module of a crate (each `.rs` file under encoder/src, core/src,
service/src, trainer/src and src) is named in docs/architecture.md by its path relative to the
crate's src folder, in backticks, on a line of that crate's section: the section starts at the
heading that names the src folder in backticks (`### \`core/src/\` …`) and ends at the next
heading. A folder module's `x/mod.rs` may be named as `x/` instead. So `core/src/store/edge.rs`
is named by `store/edge.rs` under the `core/src/` heading; a bare `edge.rs` does not count.

    python3 scripts/layout.py [REPO]     # default: the current directory
"""
import os
import re
import sys

CRATES = {'encoder': 'encoder/src', 'core': 'core/src', 'service': 'service/src',
          'trainer': 'trainer/src', 'mrl': 'src'}
MAX_LINES = 1000
TOP_DIRS = ('src', 'encoder', 'core', 'service', 'trainer', 'tests', 'benches', 'docs',
            'configs', 'scripts', 'examples', '.ci', 'models')
TOP_FILES = ('Cargo.toml', 'Cargo.lock', 'README.md', '.gitignore')
SHIPPED_MODEL = 'models/mrl-minilm-elastic'
ARCHITECTURE = 'docs/architecture.md'


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


def slug(heading):
    """GitHub's anchor for a Markdown heading."""
    text = heading.strip().lower().replace('`', '')
    return re.sub(r'[^\w\- ]', '', text).replace(' ', '-')


def anchors(path):
    out, fenced = set(), False
    for line in open(path, encoding='utf-8'):
        if line.startswith('```'):
            fenced = not fenced
        elif not fenced and re.match(r'#{1,6} ', line):
            out.add(slug(line.lstrip('#')))
    return out


def clean(word):
    """A word as cited, reduced to the path it names, or None when it names no checked path."""
    word = word.strip().strip('`')
    word = re.sub(r'^(--[\w-]+=|[A-Z_][A-Z0-9_]*=)', '', word)
    word = word.lstrip('"\'([$').rstrip('"\')]},;.!?:')
    word = re.sub(r'^\$\(', '', word).rstrip(')"\'')
    word = word.split('#')[0]
    word = re.sub(r':\d+(-\d+)?$', '', word).rstrip(',;.:')
    if not word or any(c in word for c in ('*', '<', '>', '{', '}', '…', '...', '$')):
        return None
    parts = word.split('/')
    if parts[0] not in TOP_DIRS and word not in TOP_FILES:
        return None
    if parts[0] in TOP_DIRS and len(parts) == 1:
        return None  # a bare word such as "models" or "docs", not a path
    for part in parts:
        stem = part.split('.')[0]
        if stem and stem.isupper() and re.fullmatch(r'[A-Z][A-Z0-9_]*', stem) and stem not in (
                'README', 'LICENSE', 'ARCHITECTURE', 'CHANGELOG'):
            return None
    if parts[0] == 'models' and not (word + '/').startswith(SHIPPED_MODEL + '/'):
        return None
    return word


def markdown_citations(path):
    """(line number, word) of every backticked word and code-block word, and (line, target) of
    every link, in a Markdown file."""
    words, links = [], []
    fenced, code, blank = False, False, True
    for n, line in enumerate(open(path, encoding='utf-8'), 1):
        if line.startswith('```'):
            fenced = not fenced
            continue
        if fenced:
            words += [(n, w) for w in line.split()]
            continue
        indented = line.startswith('    ') and line.strip() != ''
        code = indented and (blank or code)
        blank = line.strip() == ''
        if code:
            words += [(n, w) for w in line.split()]
            continue
        for span in re.findall(r'`([^`]+)`', line):
            words += [(n, w) for w in span.split()]
        for target in re.findall(r'\]\(([^)\s]+)\)', line):
            links.append((n, target))
    return words, links


def toml_citations(path):
    words = []
    for n, line in enumerate(open(path, encoding='utf-8'), 1):
        hit = re.search(r'(?:^|\s)#(.*)$', line)
        if hit:
            words += [(n, w) for w in hit.group(1).split()]
    return words


def cited_paths(top):
    """Paths cited in the README, docs and configs that do not exist."""
    broken = []
    docs = [os.path.join(top, 'README.md')] + sorted(
        os.path.join(top, 'docs', n) for n in os.listdir(os.path.join(top, 'docs'))
        if n.endswith('.md'))
    configs = sorted(os.path.join(top, 'configs', n) for n in os.listdir(os.path.join(top, 'configs'))
                     if n.endswith('.toml'))
    cited = []
    for doc in docs:
        words, links = markdown_citations(doc)
        cited += [(doc, n, w) for n, w in words]
        for n, target in links:
            if re.match(r'[a-z]+:', target):
                continue
            file, _, anchor = target.partition('#')
            where = os.path.normpath(os.path.join(os.path.dirname(doc), file)) if file else doc
            name = os.path.relpath(doc, top)
            if not os.path.exists(where):
                broken.append(f"{name}:{n}: link to {target}: {os.path.relpath(where, top)} is not there")
            elif anchor and where.endswith('.md') and anchor not in anchors(where):
                broken.append(f"{name}:{n}: link to {target}: no heading #{anchor} in "
                              f"{os.path.relpath(where, top)}")
    for conf in configs:
        cited += [(conf, n, w) for n, w in toml_citations(conf)]
    for f, n, word in cited:
        path = clean(word)
        if path is not None and not os.path.exists(os.path.join(top, path)):
            broken.append(f"{os.path.relpath(f, top)}:{n}: cites {path}, which is not there")
    return broken


def unnamed_modules(top):
    """Modules of each crate that docs/architecture.md does not name in the crate's section."""
    sections, current = {}, None
    for line in open(os.path.join(top, ARCHITECTURE), encoding='utf-8'):
        if line.startswith('#'):
            current = next((root for root in CRATES.values()
                            if f'`{root}/`' in line), None)
            continue
        if current is not None:
            for span in re.findall(r'`([^`]+)`', line):
                sections.setdefault(current, set()).update(span.split())
    broken = []
    for crate, root in CRATES.items():
        named = sections.get(root, set())
        if not named:
            broken.append(f"{ARCHITECTURE}: no section headed `{root}/` for crate {crate}")
            continue
        for d, _, names in os.walk(os.path.join(top, root)):
            for n in sorted(names):
                if not n.endswith('.rs'):
                    continue
                rel = os.path.relpath(os.path.join(d, n), os.path.join(top, root)).replace(os.sep, '/')
                ok = {rel}
                if n == 'mod.rs':
                    ok.add(rel[:-len('mod.rs')])
                if not ok & named:
                    broken.append(f"{ARCHITECTURE}: module {root}/{rel} is not named "
                                  f"(as `{rel}`) under its `{root}/` heading")
    return broken


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
    broken += cited_paths(top)
    broken += unnamed_modules(top)
    for b in broken:
        print(b)
    print(f"layout: {len(broken)} broken rule(s)")
    return 1 if broken else 0


if __name__ == '__main__':
    sys.exit(main())
