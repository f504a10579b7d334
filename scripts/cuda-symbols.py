#!/usr/bin/env python3
"""Checks that every CUDA function the converse binary loads at run time resolves in the real
libraries: `scripts/cuda-build --check-symbols` runs it.

cudarc (`dynamic-loading`) opens each library with dlopen and looks each function up by name the
first time it is called, from a string literal in its wrapper; the linker drops the wrappers (and
their names) that nothing calls. So the binary's read-only data (`.rodata`) holds the name of
every CUDA function it can call: this finds each name cudarc declares (its `load::<_F>("name")`
calls, per library) there, leaving out a name found only inside a longer declared name, then
dlopens each library and dlsyms each of its names. The set is a superset: the static CUDA
runtime's own table of driver function names lands in `.rodata` too.

usage: cuda-symbols.py CUDARC_SRC BINARY MODULE=LIBRARY_FILE...
"""

import ctypes
import os
import re
import struct
import sys


def declared(src, module):
    text = open(os.path.join(src, module, "sys", "mod.rs")).read()
    return set(re.findall(r'load::<_F>\("(\w+)"\)', text))


def rodata(path):
    """The bytes of an ELF64 file's `.rodata` section."""
    data = open(path, "rb").read()
    if data[:5] != b"\x7fELF\x02":
        sys.exit(f"cuda-symbols: '{path}' is not a 64-bit ELF file")
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)
    sections = [struct.unpack_from("<IIQQQQ", data, shoff + i * shentsize) for i in range(shnum)]
    names = sections[shstrndx]
    for name, _, _, _, offset, size in sections:
        start = names[4] + name
        if data[start : data.index(b"\0", start)] == b".rodata":
            return data[offset : offset + size]
    sys.exit(f"cuda-symbols: no .rodata in '{path}'")


def main():
    src, binary, *pairs = sys.argv[1:]
    libs = dict(p.split("=", 1) for p in pairs)
    names = {m: declared(src, m) for m in libs}
    data = rodata(binary)
    everything = set().union(*names.values())
    # Every place some declared name occurs: (start, end) spans.
    spans = {}
    for n in everything:
        b = n.encode()
        i = data.find(b)
        while i >= 0:
            spans.setdefault(n, []).append((i, i + len(b)))
            i = data.find(b, i + 1)
    covered = {}
    for n, ss in spans.items():
        for s in ss:
            covered.setdefault(s[0], []).append(s[1])

    def inside_longer(n, start, end):
        # Another declared name's occurrence contains this one.
        for st in range(max(0, start - 64), start + 1):
            for e in covered.get(st, []):
                if e >= end and (st, e) != (start, end):
                    return True
        return False

    failed = 0
    total = 0
    for module, path in libs.items():
        used = sorted(
            n for n in names[module] if any(not inside_longer(n, s, e) for s, e in spans.get(n, []))
        )
        try:
            lib = ctypes.CDLL(path, mode=os.RTLD_LAZY | os.RTLD_LOCAL)
        except OSError as e:
            print(f"cuda-symbols: cannot load {path}: {e}", file=sys.stderr)
            failed += 1
            continue
        missing = [n for n in used if not hasattr(lib, n)]
        total += len(used)
        print(
            f"cuda-symbols: {module}: {len(used)} functions used, "
            f"{len(used) - len(missing)} resolve in {os.path.basename(path)}"
            + (f"; MISSING: {' '.join(missing)}" if missing else "")
            + (f" ({' '.join(used)})" if len(used) <= 12 and used else ""),
            file=sys.stderr,
        )
        failed += len(missing)
    if failed:
        sys.exit(1)
    print(f"cuda-symbols: all {total} CUDA functions the binary can load resolve", file=sys.stderr)


main()
