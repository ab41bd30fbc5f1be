#!/usr/bin/env python3
"""Layout checks that rustc and clippy do not make, run by .ci/run before the tests.

1. No file under crates/*/src is longer than LIMIT lines unless .ci/long-files.txt lists
   it, with a one-line reason ("path  reason").
2. No file-level import loop inside a crate. A file imports another when one of its `use`
   paths starting with `crate::`, `super::` or `self::`, or a `crate::a::b` path written
   inline, names an item of the module that file defines (the longest prefix of the path
   that is a module decides). `mod` declarations are not imports; `use super::*` in a
   child file imports its parent. Loops listed in .ci/known-loops.txt
   ("crate: file file ...  # reason") are tolerated while every file of a found loop is
   in one listed entry.

Usage: check_layout.py [ROOT]   (ROOT: the workspace, default: this script's parent's parent)
       check_layout.py --self-test

Reads files only; never edits them. Comments, strings and char literals are blanked
before anything is parsed, so a doc link to `crate::x` is not an import.
"""

import os
import re
import sys
import tempfile

LIMIT = 600
TOKEN = re.compile(r"\$?[A-Za-z_][A-Za-z0-9_]*|::|[{};,*()]|\S")


def strip(src):
    """The source with comments, string and char literals replaced by spaces (newlines kept)."""
    out, i, n = [], 0, len(src)
    while i < n:
        c = src[i]
        if src.startswith("//", i):
            j = src.find("\n", i)
            j = n if j < 0 else j
            out.append(" " * (j - i))
            i = j
        elif src.startswith("/*", i):
            depth, j = 1, i + 2
            while j < n and depth:
                if src.startswith("/*", j):
                    depth, j = depth + 1, j + 2
                elif src.startswith("*/", j):
                    depth, j = depth - 1, j + 2
                else:
                    j += 1
            out.append(re.sub(r"[^\n]", " ", src[i:j]))
            i = j
        elif c == "r" and re.match(r'r#*"', src[i:]) and (i == 0 or not (src[i - 1].isalnum() or src[i - 1] == "_")):
            hashes = len(re.match(r"r(#*)", src[i:]).group(1))
            end = src.find('"' + "#" * hashes, i + 2 + hashes)
            j = n if end < 0 else end + 1 + hashes
            out.append(re.sub(r"[^\n]", " ", src[i:j]))
            i = j
        elif c == '"':
            j = i + 1
            while j < n and src[j] != '"':
                j += 2 if src[j] == "\\" else 1
            j = min(j + 1, n)
            out.append(re.sub(r"[^\n]", " ", src[i:j]))
            i = j
        elif c == "'":
            # A char literal ('a', '\n', '\u{1F600}'), else a lifetime or label.
            m = re.match(r"'(\\(u\{[0-9a-fA-F]+\}|x[0-9a-fA-F]{2}|.)|[^\\'])'", src[i:])
            if m:
                out.append(" " * len(m.group(0)))
                i += len(m.group(0))
            else:
                out.append(c)
                i += 1
        else:
            out.append(c)
            i += 1
    return "".join(out)


def parse_use_tree(toks, i):
    """Parses a use tree starting at toks[i]; returns (paths, next index)."""
    prefix = []
    while i < len(toks):
        t = toks[i]
        if t == "{":
            paths, i = [], i + 1
            while i < len(toks) and toks[i] != "}":
                sub, i = parse_use_tree(toks, i)
                paths += [prefix + p for p in sub]
                if i < len(toks) and toks[i] == ",":
                    i += 1
            return (paths or [prefix]), i + 1
        if t in ("*",) or re.match(r"\$?[A-Za-z_]", t):
            prefix.append(t)
            i += 1
            if i < len(toks) and toks[i] == "::":
                i += 1
                continue
            if i + 1 < len(toks) and toks[i] == "as":
                i += 2
            return [prefix], i
        return [prefix], i
    return [prefix], i


def scan(text):
    """Module declarations and import paths of one file.

    Returns (decls, uses): decls are (inline scope, name, is_inline) for every `mod name`;
    uses are (scope, path) where scope is the inline-module path inside the file."""
    toks = TOKEN.findall(strip(text))
    decls, uses = [], []
    scope, opened, depth = [], [], 0  # opened: depths at which inline modules close
    i = 0
    while i < len(toks):
        t = toks[i]
        if t == "{":
            depth += 1
        elif t == "}":
            depth -= 1
            if opened and opened[-1] == depth:
                opened.pop()
                scope.pop()
        elif t == "mod" and i + 2 < len(toks) and re.match(r"[A-Za-z_]", toks[i + 1]):
            name, nxt = toks[i + 1], toks[i + 2]
            decls.append((list(scope), name, nxt == "{"))
            if nxt == "{":
                scope.append(name)
                opened.append(depth)
                depth += 1
                i += 3
                continue
        elif t == "use":
            paths, i = parse_use_tree(toks, i + 1)
            for p in paths:
                if p and p[0] in ("crate", "$crate", "super", "self"):
                    uses.append((list(scope), p))
            continue
        elif t in ("crate", "$crate") and i + 1 < len(toks) and toks[i + 1] == "::":
            path, j = [t], i + 1
            while j + 1 < len(toks) and toks[j] == "::" and re.match(r"[A-Za-z_]", toks[j + 1]):
                path.append(toks[j + 1])
                j += 2
            uses.append((list(scope), path))
            i = j
            continue
        i += 1
    return decls, uses


def crate_modules(src_dir, root):
    """Every module reachable from one crate root: {module path tuple: file}, and each
    file's own module path."""
    modules, file_mod, texts = {}, {}, {}
    todo = [((), os.path.join(src_dir, root), src_dir)]
    while todo:
        mod, path, child_dir = todo.pop()
        if path in file_mod or not os.path.exists(path):
            continue
        modules[mod] = path
        file_mod[path] = mod
        texts[path] = open(path, encoding="utf-8").read()
        for scope, name, inline in scan(texts[path])[0]:
            full = mod + tuple(scope) + (name,)
            if inline:
                modules.setdefault(full, path)
                continue
            d = os.path.join(child_dir, *scope)
            for cand, cdir in ((os.path.join(d, name + ".rs"), os.path.join(d, name)),
                               (os.path.join(d, name, "mod.rs"), os.path.join(d, name))):
                if os.path.exists(cand):
                    todo.append((full, cand, cdir))
                    break
    return modules, file_mod, texts


def import_graph(src_dir, root):
    """{file: {imported file}} for one crate root."""
    modules, file_mod, texts = crate_modules(src_dir, root)
    graph = {}
    for path, mod in file_mod.items():
        edges = graph.setdefault(path, set())
        for scope, p in scan(texts[path])[1]:
            base = list(mod) + scope
            if p[0] in ("crate", "$crate"):
                full, rest = [], p[1:]
            else:
                rest = p
                while rest and rest[0] in ("self", "super"):
                    if rest[0] == "super" and base:
                        base = base[:-1]
                    rest = rest[1:]
                full = base
            full = list(full) + [s for s in rest if s != "*"]
            for k in range(len(full), -1, -1):
                target = modules.get(tuple(full[:k]))
                if target is not None:
                    if target != path:
                        edges.add(target)
                    break
    return graph


def cycles(graph):
    """Strongly connected components of more than one file (Tarjan), sorted."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]
    sys.setrecursionlimit(10000)

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
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
    return sorted(out)


def one_loop(graph, comp):
    """One closed path through a component, for the message."""
    members, start = set(comp), comp[0]
    prev, todo = {start: None}, [start]
    while todo:
        v = todo.pop(0)
        for w in sorted(graph[v]):
            if w == start:
                path = [v]
                while prev[path[-1]] is not None:
                    path.append(prev[path[-1]])
                return list(reversed(path)) + [start]
            if w in members and w not in prev:
                prev[w] = v
                todo.append(w)
    return comp


def read_list(path):
    """Non-comment lines of an allow-list file, as (entry, reason)."""
    if not os.path.exists(path):
        return []
    out = []
    for line in open(path, encoding="utf-8"):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        entry, _, reason = line.partition("#") if "#" in line else (line, "", "")
        out.append((entry.strip(), reason.strip()))
    return out


def check(root, out=sys.stdout):
    """Runs both checks on the workspace at `root`; returns the number of violations."""
    crates_dir = os.path.join(root, "crates")
    failures = 0
    long_allowed = {}
    for entry, reason in read_list(os.path.join(root, ".ci", "long-files.txt")):
        path, _, inline_reason = entry.partition(" ")
        long_allowed[path] = reason or inline_reason.strip()
    known = []
    for entry, _ in read_list(os.path.join(root, ".ci", "known-loops.txt")):
        krate, _, files = entry.partition(":")
        known.append((krate.strip(), set(files.split())))
    seen_long, seen_known = set(), set()
    for krate in sorted(os.listdir(crates_dir)):
        src = os.path.join(crates_dir, krate, "src")
        if not os.path.isdir(src):
            continue
        for d, _, files in sorted(os.walk(src)):
            for f in sorted(files):
                if not f.endswith(".rs"):
                    continue
                path = os.path.join(d, f)
                rel = os.path.relpath(path, root)
                lines = sum(1 for _ in open(path, encoding="utf-8"))
                if lines > LIMIT:
                    if rel in long_allowed:
                        seen_long.add(rel)
                    else:
                        print(f"too long: {rel} has {lines} lines (limit {LIMIT}); split it or list it in .ci/long-files.txt with a reason", file=out)
                        failures += 1
        for root_file in ("lib.rs", "main.rs"):
            if not os.path.exists(os.path.join(src, root_file)):
                continue
            graph = import_graph(src, root_file)
            for comp in cycles(graph):
                rels = [os.path.relpath(p, os.path.join(crates_dir, krate)) for p in comp]
                allowed = [k for k, (kc, files) in enumerate(known) if kc == krate and set(rels) <= files]
                loop = " -> ".join(os.path.relpath(p, os.path.join(crates_dir, krate)) for p in one_loop(graph, comp))
                if allowed:
                    seen_known.update(allowed)
                    print(f"known import loop in {krate}: {' '.join(rels)} (e.g. {loop})", file=out)
                else:
                    print(f"import loop in {krate}: {loop}\n  files of the loop: {' '.join(rels)}", file=out)
                    failures += 1
    for path in sorted(set(long_allowed) - seen_long):
        print(f"note: {path} is listed in .ci/long-files.txt but is not over {LIMIT} lines: remove the entry", file=out)
    for k, (krate, files) in enumerate(known):
        if k not in seen_known:
            print(f"note: the known loop {krate}: {' '.join(sorted(files))} is gone: remove the entry", file=out)
    return failures


def self_test():
    """The checker on a tiny fixture workspace: it must find the loops planted there, and
    only those."""
    import io

    def write(root, rel, text):
        path = os.path.join(root, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)

    with tempfile.TemporaryDirectory() as root:
        # `loopy`: a.rs -> b.rs (use) and b.rs -> a.rs (inline crate:: path): a loop.
        write(root, "crates/loopy/src/lib.rs", "mod a;\nmod b;\n/// See [`crate::a::A`].\npub use self::c::C;\nmod c { pub struct C; }\n")
        write(root, "crates/loopy/src/a.rs", "use crate::b::{B, other::*};\npub struct A;\n")
        write(root, "crates/loopy/src/b.rs", "pub mod other;\npub fn f() -> crate::a::A { crate::a::A }\npub struct B;\n")
        write(root, "crates/loopy/src/b/other.rs", "// use crate::a; is only a comment\nconst S: &str = \"use crate::a::A;\";\n")
        # `parent`: a child's `use super::*` imports its parent, which imports the child.
        write(root, "crates/parent/src/lib.rs", "mod p;\n")
        write(root, "crates/parent/src/p.rs", "mod q;\nuse self::q::Q;\npub struct P;\n")
        write(root, "crates/parent/src/p/q.rs", "use super::*;\npub struct Q;\n")
        # `clean`: no loops: mod declarations and a test module's `use super::*` are not
        # imports of another file; a char literal '{' does not open a scope.
        write(root, "crates/clean/src/lib.rs", "pub mod x;\npub mod y;\nfn f<'a>(s: &'a str) -> char { '{' }\n#[cfg(test)]\nmod tests { use super::*; use crate::x::X; }\n")
        write(root, "crates/clean/src/x.rs", "use crate::y::Y;\npub struct X(Y);\n#[cfg(test)]\nmod tests { use super::*; }\n")
        write(root, "crates/clean/src/y.rs", "pub struct Y;\n")
        # One long file, and one listed long file.
        write(root, "crates/clean/src/long.rs", "//\n" * (LIMIT + 1))
        write(root, "crates/clean/src/listed.rs", "//\n" * (LIMIT + 1))
        write(root, ".ci/long-files.txt", "crates/clean/src/listed.rs  # a fixture\n")

        buf = io.StringIO()
        failures = check(root, buf)
        report = buf.getvalue()
        expect = [
            "import loop in loopy: src/a.rs -> src/b.rs -> src/a.rs",
            "import loop in parent: src/p.rs -> src/p/q.rs -> src/p.rs",
            "too long: crates/clean/src/long.rs",
        ]
        problems = [f"missing: {e}" for e in expect if e not in report]
        if failures != len(expect):
            problems.append(f"{failures} violations, expected {len(expect)}")
        for unwanted in ("loop in clean", "listed.rs has"):
            if unwanted in report:
                problems.append(f"unexpected: {unwanted}")

        # A known loop is tolerated, and only while it stays within its entry.
        write(root, ".ci/known-loops.txt", "loopy: src/a.rs src/b.rs  # a fixture\nparent: src/p.rs  # too small\n")
        buf = io.StringIO()
        failures = check(root, buf)
        if failures != 2 or "known import loop in loopy" not in buf.getvalue():
            problems.append(f"known loops: {failures} violations:\n{buf.getvalue()}")

    if problems:
        print("check_layout self-test FAILED:\n  " + "\n  ".join(problems) + "\nreport:\n" + report)
        return 1
    print("check_layout self-test passed")
    return 0


def main():
    if sys.argv[1:] == ["--self-test"]:
        return self_test()
    root = sys.argv[1] if len(sys.argv) > 1 else os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    failures = check(root)
    if failures:
        print(f"{failures} layout violation(s)")
        return 1
    print("layout: no unlisted long file, no unlisted import loop")
    return 0


if __name__ == "__main__":
    sys.exit(main())
