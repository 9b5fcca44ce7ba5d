#!/usr/bin/env python3
"""Size report of a firmware ELF: flash (.text + .rodata + .data + vector
table), static RAM (.data + .bss), and how much of the flash each crate's
symbols take, by the crate named in each symbol's (demangled) path.

Inlined code counts for the function it was inlined into, and anonymous
constants (string literals, tables) cannot be attributed: they are listed
as "unattributed". With --baseline, the same figures of a firmware built
in the same run without Lanyard (examples/stm32's `baseline` binary: the
same board code) and the difference: what the agent firmware adds, exactly.
With --without, the difference to the same firmware built without a
feature (what the feature costs), against --goal-added (printed, not
enforced). Usage: size-report.py ELF [--baseline ELF] [--without ELF
[--goal-added KiB]] [--budget-flash KiB] [--budget-ram KiB]; exits 1 if a
budget is exceeded."""

import argparse
import re
import subprocess
import sys
from collections import defaultdict


def tool(name):
    for prefix in ("arm-none-eabi-", "llvm-"):
        try:
            subprocess.run([prefix + name, "--version"], capture_output=True, check=True)
            return prefix + name
        except (OSError, subprocess.CalledProcessError):
            continue
    sys.exit(f"neither arm-none-eabi-{name} nor llvm-{name} is installed "
             "(scripts/test-all.sh installs binutils-arm-none-eabi)")


def sections(elf):
    out = subprocess.run([tool("size"), "-A", elf], capture_output=True, text=True, check=True).stdout
    sizes = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0].startswith(".") and parts[1].isdigit():
            sizes[parts[0]] = int(parts[1])
    return sizes


CRATE_GROUPS = [
    ("lanyard", ("lanyard_core", "lanyard_nostd")),
    ("firmware (examples/stm32)", ("lanyard_stm32",)),
    ("minicbor", ("minicbor",)),
    ("core + compiler_builtins", ("core", "compiler_builtins", "<core", "<&", "<u", "<i", "<f", "<bool", "<str", "<char", "<[")),
    ("cortex-m, cortex-m-rt, semihosting, PAC", ("cortex_m", "cortex_m_rt", "cortex_m_semihosting", "panic_semihosting", "stm32f4", "critical_section")),
    ("heapless, cobs, crc, embedded-*", ("heapless", "cobs", "crc", "embedded_io", "embedded_hal", "embedded_storage")),
]


def crate_of(name):
    # `<A as B>::f` belongs to A's crate; generic paths to their first segment.
    m = re.match(r"<([A-Za-z_][A-Za-z0-9_]*)", name)
    head = m.group(1) if m else re.split(r"::|<", name, maxsplit=1)[0]
    for group, prefixes in CRATE_GROUPS:
        for p in prefixes:
            p = p.lstrip("<")
            if head == p:
                return group
    if head in ("u8", "u16", "u32", "u64", "usize", "i32", "i64", "f32", "f64", "str", "bool", "char"):
        return "core + compiler_builtins"
    return None


def symbols(elf):
    out = subprocess.run([tool("nm"), "-C", "-S", "--size-sort", elf], capture_output=True, text=True, check=True).stdout
    by_group = defaultdict(int)
    for line in out.splitlines():
        parts = line.split(None, 3)
        if len(parts) < 4:
            continue
        size, kind, name = int(parts[1], 16), parts[2], parts[3]
        if kind not in "tTrR":
            continue
        by_group[crate_of(name) or "unattributed (anonymous constants, other)"] += size
    return by_group


def flash_and_ram(elf):
    s = sections(elf)
    flash = s.get(".vector_table", 0) + s.get(".text", 0) + s.get(".rodata", 0) + s.get(".data", 0)
    ram = s.get(".data", 0) + s.get(".bss", 0)
    return s, flash, ram


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("elf")
    ap.add_argument("--baseline", help="ELF of the same board without Lanyard")
    ap.add_argument("--without", help="ELF of the same firmware without the feature measured")
    ap.add_argument("--goal-added", type=float,
                    help="KiB the feature should add at most (reported, not enforced)")
    ap.add_argument("--budget-flash", type=float, help="KiB")
    ap.add_argument("--budget-ram", type=float, help="KiB")
    a = ap.parse_args()
    s, flash, ram = flash_and_ram(a.elf)
    print(f"firmware: {a.elf}")
    print(f"  flash: {flash:>7} B = {flash / 1024:5.1f} KiB  (.vector_table {s.get('.vector_table', 0)}, .text {s.get('.text', 0)}, .rodata {s.get('.rodata', 0)}, .data {s.get('.data', 0)})")
    print(f"  RAM:   {ram:>7} B = {ram / 1024:5.1f} KiB  (.data {s.get('.data', 0)}, .bss {s.get('.bss', 0)}; the stack is not included)")
    groups = symbols(a.elf)
    total = sum(groups.values())
    print(f"  flash by crate (symbols, {total} B):")
    for g, n in sorted(groups.items(), key=lambda kv: -kv[1]):
        print(f"    {g:<45} {n:>7} B  {100 * n / max(flash, 1):5.1f} % of flash")
    if a.baseline:
        _, base_flash, base_ram = flash_and_ram(a.baseline)
        print(f"baseline (same board, no Lanyard): {a.baseline}")
        print(f"  flash: {base_flash:>7} B = {base_flash / 1024:5.1f} KiB   RAM: {base_ram:>7} B")
        print(f"  the agent firmware adds {flash - base_flash} B of flash "
              f"({flash / max(base_flash, 1):.1f}x the baseline) and {ram - base_ram} B of static RAM")
    if a.without:
        _, w_flash, w_ram = flash_and_ram(a.without)
        added = flash - w_flash
        print(f"  against {a.without}: the feature adds {added} B = {added / 1024:.1f} KiB of flash "
              f"and {ram - w_ram} B of static RAM")
        if a.goal_added is not None:
            verdict = "within" if added <= a.goal_added * 1024 else "OVER"
            print(f"  goal for the feature {a.goal_added:g} KiB: {verdict} ({added / (a.goal_added * 1024):.2f} of it)")
    failed = False
    if a.budget_flash is not None:
        ok = flash <= a.budget_flash * 1024
        failed |= not ok
        print(f"  flash budget {a.budget_flash:g} KiB: {'within' if ok else 'EXCEEDED'} ({flash / (a.budget_flash * 1024):.2f} of it)")
    if a.budget_ram is not None:
        ok = ram <= a.budget_ram * 1024
        failed |= not ok
        print(f"  RAM budget {a.budget_ram:g} KiB: {'within' if ok else 'EXCEEDED'} ({ram / (a.budget_ram * 1024):.2f} of it)")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
