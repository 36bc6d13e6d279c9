#!/usr/bin/env python3
"""Where a program's time goes inside lavapipe's compiled shaders, instruction by instruction.

    python3 bench/jit_profile.py [--top N] -- COMMAND [ARGS...]
    e.g. python3 bench/jit_profile.py -- target/release/ssmgpu bench --model DIR --batch 1

lavapipe (llvmpipe) compiles every kernel to x86 in anonymous executable memory, which perf
samples but cannot disassemble. This runs COMMAND under `perf record` and gdb; gdb copies the
executable anonymous mappings out of the process before it unmaps them, objdump disassembles
them, and the samples are matched to instructions. It prints the share of samples in compiled
kernels, how those split between llvmpipe's per-lane loops (its storage loads and stores run a
loop over the 8 SIMD lanes, with a branch per lane), float arithmetic and the rest, and the
hottest instructions. Needs perf, gdb and objdump (binutils); gdb runs the program with ASLR off
and slows it down, so read shares from it, not times.
"""

import argparse
import bisect
import collections
import os
import re
import shutil
import subprocess
import sys
import tempfile

GDB_SCRIPT = r"""
set pagination off
set confirm off
catch syscall munmap
run
python
import os
out = os.environ["JIT_DUMP_DIR"]
done = set()
while gdb.selected_inferior().pid != 0:
    inferior = gdb.selected_inferior()
    for line in open(f"/proc/{inferior.pid}/maps"):
        fields = line.split()
        # Executable and backed by no file: compiled code.
        if "x" in fields[1] and len(fields) < 6 and fields[0] not in done:
            start, end = (int(v, 16) for v in fields[0].split("-"))
            with open(f"{out}/{start:x}.bin", "wb") as f:
                f.write(bytes(inferior.read_memory(start, end - start)))
            done.add(fields[0])
    try:
        gdb.execute("continue", to_string=True)
    except gdb.error:
        break
end
"""

INSTRUCTION = re.compile(r"^\s*([0-9a-f]+):\s*(?:[0-9a-f]{2} )+\s*(.*)$")
JUMP = re.compile(r"^j\w+\s+0x([0-9a-f]+)")
FLOAT_MATH = re.compile(r"^v(mul|add|sub|fmadd|fmsub|fnmadd|div|max|min|sqrt|rsqrt)\w*p[sd]\b")


def disassemble(path, start):
    """[(address, text)] of a dumped mapping."""
    listing = subprocess.run(
        ["objdump", "-D", "-b", "binary", "-mi386:x86-64", f"--adjust-vma={start:#x}", path],
        capture_output=True, text=True, check=True,
    ).stdout
    out = []
    for line in listing.splitlines():
        m = INSTRUCTION.match(line)
        if m and m.group(2):
            out.append((int(m.group(1), 16), m.group(2).strip()))
    return out


def in_lane_loops(code):
    """The addresses inside llvmpipe's per-lane loops: a backward jump over a body that counts
    its lanes up to 8 (`cmp $0x8,...`). `code` is sorted by address."""
    addresses = [a for a, _ in code]
    inside = set()
    for i, (address, text) in enumerate(code):
        m = JUMP.match(text)
        if not m:
            continue
        target = int(m.group(1), 16)
        if target >= address or address - target > 2048:
            continue
        body = code[bisect.bisect_left(addresses, target) : i + 1]
        if any(t.startswith("cmp    $0x8,") for _, t in body):
            inside.update(a for a, _ in body)
    return inside


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--top", type=int, default=12, help="hottest instructions to list")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give the command to profile after --")
    missing = [tool for tool in ("perf", "gdb", "objdump") if shutil.which(tool) is None]
    if missing:
        sys.exit(f"jit_profile needs {', '.join(missing)} (apt-get install linux-perf gdb binutils)")
    with tempfile.TemporaryDirectory() as tmp:
        script = os.path.join(tmp, "dump.gdb")
        with open(script, "w") as f:
            f.write(GDB_SCRIPT)
        perf_data = os.path.join(tmp, "perf.data")
        subprocess.run(
            ["perf", "record", "-q", "-F", "5000", "-o", perf_data, "--",
             "gdb", "-q", "-batch", "-x", script, "--args", *command],
            env={**os.environ, "JIT_DUMP_DIR": tmp}, stdout=subprocess.DEVNULL, check=True,
        )
        samples = subprocess.run(
            ["perf", "script", "-i", perf_data, "-F", "ip,dso"],
            capture_output=True, text=True, check=True,
        ).stdout.splitlines()
        code = []
        for name in sorted(os.listdir(tmp)):
            if name.endswith(".bin"):
                code += disassemble(os.path.join(tmp, name), int(name[:-4], 16))
    code = sorted(set(code))
    if not code:
        sys.exit("no compiled code was found: is the device lavapipe?")
    counts = collections.Counter(int(line.split()[0], 16) for line in samples if line.strip())
    address_of = {a for a, _ in code}
    total = sum(counts.values())
    in_code = {a: c for a, c in counts.items() if a in address_of}
    jit = sum(in_code.values())
    print(f"{total} samples, {jit} ({100 * jit / max(total, 1):.1f}%) in compiled kernels")
    loops = in_lane_loops(code)
    in_loops = sum(c for a, c in in_code.items() if a in loops)
    text_of = dict(code)
    math = sum(c for a, c in in_code.items() if FLOAT_MATH.match(text_of[a]))
    other = jit - in_loops - math
    for what, n in [("per-lane loops (loads, stores)", in_loops),
                    ("float arithmetic outside them", math), ("the rest", other)]:
        print(f"  {what:32} {100 * n / max(jit, 1):5.1f}%")
    print("hottest instructions (a sample often lands just after the one that stalled):")
    for address, n in sorted(in_code.items(), key=lambda kv: -kv[1])[: args.top]:
        print(f"  {address:x} {100 * n / jit:5.1f}%  {text_of[address]}")


if __name__ == "__main__":
    main()
