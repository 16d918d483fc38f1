#!/usr/bin/env python3
"""Prints the dependency edges between fovea-node's top-level modules (from `crate::`
paths in the source) and any cycle among them: the layering check of docs/MESH.md's
"Layout" (front → routing → mesh → handle → transport; config, auth, stats, error below).

    scripts/layers.py [crates/fovea-node/src]
"""
import pathlib
import re
import sys

root = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else "crates/fovea-node/src")
# Items the crate root re-exports, by the module that defines them.
reexports = {}
lib = (root / "lib.rs").read_text()
for m in re.finditer(r"pub(?:\(crate\))? use ([a-z_]+)::(?:\{([^}]*)\}|([A-Za-z_]+));", lib):
    for name in re.findall(r"[A-Za-z_]+", m.group(2) or m.group(3)):
        reexports[name] = m.group(1)
edges = {}
for f in root.rglob("*.rs"):
    rel = f.relative_to(root)
    top = rel.parts[0].removesuffix(".rs")
    if top in ("lib", "main"):
        continue
    text = f.read_text()
    # Test modules may reach anywhere; the layering is about the code that ships.
    text = re.split(r"#\[cfg\(test\)\]\s*mod tests", text)[0]
    # Doc links are not dependencies.
    text = "\n".join(l for l in text.split("\n") if not l.lstrip().startswith("//"))
    for m in re.finditer(r"crate::\{?([a-z_]+)", text):
        dep = m.group(1)
        if dep != top and (root / f"{dep}.rs").exists() or (root / dep).is_dir():
            if dep != top:
                edges.setdefault(top, set()).add(dep)
    for m in re.finditer(r"crate::([A-Z][A-Za-z_]*)", text):
        dep = reexports.get(m.group(1))
        if dep and dep != top:
            edges.setdefault(top, set()).add(dep)
    for m in re.finditer(r"use crate::\{([^}]*)\}", text):
        for name in re.findall(r"[A-Z][A-Za-z_]*", m.group(1)):
            dep = reexports.get(name)
            if dep and dep != top:
                edges.setdefault(top, set()).add(dep)
        for dep in re.findall(r"(?:^|,)\s*([a-z_]+)", m.group(1)):
            if dep != top and ((root / f"{dep}.rs").exists() or (root / dep).is_dir()):
                edges.setdefault(top, set()).add(dep)
for a in sorted(edges):
    print(f"{a} -> {', '.join(sorted(edges[a]))}")


def cycles():
    found = set()
    for start in edges:
        stack = [(start, [start])]
        while stack:
            node, path = stack.pop()
            for nxt in edges.get(node, ()):
                if nxt == start:
                    c = path[:]
                    i = c.index(min(c))
                    found.add(tuple(c[i:] + c[:i]))
                elif nxt not in path:
                    stack.append((nxt, path + [nxt]))
    return sorted(found, key=len)


cs = cycles()
for c in cs:
    print("cycle:", " -> ".join(c + (c[0],)))
longest = max((len(c) for c in cs), default=0)
print(f"longest cycle: {longest} modules")
sys.exit(1 if longest > 2 else 0)
