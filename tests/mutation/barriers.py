#!/usr/bin/env python3
"""Barrier mutation test: what can the kernel tests see of the barriers in csrc/?

Each mutant deletes one `__syncthreads()` or `__syncwarp(...)` call from csrc/ (the call becomes
`((void)0)`, so lines keep their numbers), rebuilds `_host` and runs that op's kernel tests
(tests/test_OP_kernel.py, and tests/test_model_kernels.py) with that module under every schedule
of the host executor (SCRATCH_HOST_SCHEDULE=forward, reverse, random:1) with shared memory poisoned
(SCRATCH_HOST_POISON=1). A mutant is killed when a test fails (or the run times out); a mutant
every run passes survives: no test sees that barrier.

Every survivor must be on the allow-list (tests/mutation/allowed_barriers.txt) with the reason it
stays (a defensive barrier, with a comment at the barrier naming the change it protects against);
otherwise the script exits 1. It also exits 1 when an allow-list entry names no barrier, and says
so when an allow-listed barrier is killed after all (the entry can go).

Mutants are never written into the working tree: the sources (CMakeLists.txt, csrc/, core/,
tests/kernels/) are mirrored into build/mutation/src/ (only changed files are rewritten, so the
build stays incremental), each mutant is written there and the original restored in a `finally`,
and CMake builds that mirror into build/mutation/build/. The tests run from the working tree with
SCRATCHGPT_HOST_LIB pointing at the mutant's `_host`.

    python3 tests/mutation/barriers.py                 # every barrier (about 9 minutes on 2 cores)
    python3 tests/mutation/barriers.py --list          # the barriers, their ids, allow-listed ones
    python3 tests/mutation/barriers.py --only csrc/embedding.cu:115 --only csrc/attention.cu:219
    python3 tests/mutation/barriers.py --check         # allow-list entries all name a barrier
    python3 tests/mutation/barriers.py --rev HEAD      # mutate the committed sources, not the tree

A barrier's stable id is its file, the stripped text of its line (comment included) and the
occurrence of that text in the file (1 for the first line with that exact text), not its line
number, which moves with every edit above it.
"""
import argparse
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ALLOW_LIST = os.path.join(ROOT, "tests", "mutation", "allowed_barriers.txt")
WORK = os.path.join(ROOT, "build", "mutation")
MIRROR, BUILD, LIB = (os.path.join(WORK, d) for d in ("src", "build", "lib"))
MIRRORED = ["CMakeLists.txt", "csrc", "core", os.path.join("tests", "kernels")]
SCHEDULES = ["forward", "reverse", "random:1"]
BARRIER = re.compile(r"\b(__syncthreads|__syncwarp)\s*\(")
TEST_TIMEOUT = 600   # seconds per pytest run; a mutant that hangs a test is killed


@dataclass
class Barrier:
    file: str        # relative to the repository, e.g. csrc/attention.cu
    line: int        # 1-based, in the mirrored (= tested) source
    column: int      # where the call starts
    end: int         # one past its closing parenthesis
    call: str        # __syncthreads or __syncwarp
    text: str        # the stripped line
    occurrence: int  # of `text` in the file, 1-based
    function: str    # the enclosing function, for the report

    @property
    def key(self):
        return (self.file, self.occurrence, self.text)

    def where(self):
        return f"{self.file}:{self.line}"


def code_spans(lines):
    """Per line, the text with comments blanked (same length), so calls inside comments (and
    strings) are never mutated."""
    out, in_block = [], False
    for line in lines:
        chars, i, quote = list(line), 0, None
        while i < len(line):
            c, nxt = line[i], line[i + 1:i + 2]
            if in_block:
                if c == "*" and nxt == "/":
                    chars[i] = chars[i + 1] = " "
                    in_block = False
                    i += 2
                    continue
                chars[i] = " "
            elif quote:
                if c == "\\":
                    chars[i] = " "
                    if i + 1 < len(line):
                        chars[i + 1] = " "
                    i += 2
                    continue
                if c == quote:
                    quote = None
                chars[i] = " "
            elif c in "\"'":
                quote = c
                chars[i] = " "
            elif c == "/" and nxt == "/":
                for j in range(i, len(line)):
                    chars[j] = " "
                break
            elif c == "/" and nxt == "*":
                chars[i] = chars[i + 1] = " "
                in_block = True
                i += 2
                continue
            i += 1
        out.append("".join(chars))
    return out


FUNCTION_NAME = re.compile(r"\b([A-Za-z_]\w*)\s*\(")


def enclosing_function(lines, index):
    """The nearest function name above line `index` that starts a line at column 0 (this code
    base's formatting of kernel and device function signatures)."""
    for i in range(index, -1, -1):
        line = lines[i]
        if not line or line[0] in " \t}#/" or line.startswith("template"):
            continue
        names = [n for n in FUNCTION_NAME.findall(line) if not n.startswith("__")]
        if names:
            return names[0]
    return "?"


def find_barriers(files):
    """The barriers of csrc/'s sources in `files` ({relative path: bytes}), in file order."""
    barriers = []
    for rel in sorted(files):
        if os.path.dirname(rel) != "csrc" or not rel.endswith((".cu", ".h", ".cuh")):
            continue
        lines = files[rel].decode().split("\n")
        code = code_spans(lines)
        seen = {}
        for i, (line, stripped_code) in enumerate(zip(lines, code)):
            for m in BARRIER.finditer(stripped_code):
                depth, j = 0, m.end() - 1
                while j < len(stripped_code):
                    depth += {"(": 1, ")": -1}.get(stripped_code[j], 0)
                    j += 1
                    if depth == 0:
                        break
                text = line.strip()
                seen[text] = seen.get(text, 0) + 1
                barriers.append(Barrier(rel, i + 1, m.start(), j, m.group(1), text, seen[text],
                                        enclosing_function(lines, i)))
    return barriers


def read_allow_list(path):
    """{(file, occurrence, text): reason}. Lines: `file | occurrence | barrier line | reason`."""
    allowed = {}
    if not os.path.exists(path):
        return allowed
    with open(path) as f:
        for number, raw in enumerate(f, 1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            parts = [p.strip() for p in line.split(" | ", 3)]
            if len(parts) != 4 or not parts[1].isdigit() or not parts[3]:
                sys.exit(f"{path}:{number}: expected `file | occurrence | barrier line | reason`")
            allowed[(parts[0], int(parts[1]), parts[2])] = parts[3]
    return allowed


# ------------------------------------------------------------------------------ the mirror
def source_files(rev):
    """{relative path: bytes} of the mirrored sources, from the working tree or a git revision."""
    files = {}
    if rev:
        listing = subprocess.run(["git", "ls-tree", "-r", "--name-only", rev, "--", *MIRRORED],
                                 cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
        for rel in listing:
            files[rel] = subprocess.run(["git", "show", f"{rev}:{rel}"], cwd=ROOT,
                                        capture_output=True, check=True).stdout
        return files
    for top in MIRRORED:
        path = os.path.join(ROOT, top)
        if os.path.isfile(path):
            with open(path, "rb") as f:
                files[top] = f.read()
            continue
        for dirpath, dirnames, filenames in os.walk(path):
            dirnames[:] = [d for d in dirnames if d != "__pycache__"]
            for name in filenames:
                full = os.path.join(dirpath, name)
                with open(full, "rb") as f:
                    files[os.path.relpath(full, ROOT)] = f.read()
    return files


def write_if_changed(path, data):
    if os.path.exists(path):
        with open(path, "rb") as f:
            if f.read() == data:
                return
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)


def sync_mirror(files):
    for rel, data in files.items():
        write_if_changed(os.path.join(MIRROR, rel), data)
    for top in MIRRORED:   # files gone from the sources go from the mirror
        path = os.path.join(MIRROR, top)
        for dirpath, _, filenames in os.walk(path):
            for name in filenames:
                full = os.path.join(dirpath, name)
                if os.path.relpath(full, MIRROR) not in files:
                    os.remove(full)


def configure():
    if os.path.exists(os.path.join(BUILD, "build.ninja")):
        return
    pybind11_dir = subprocess.run([sys.executable, "-m", "pybind11", "--cmakedir"],
                                  capture_output=True, text=True, check=True).stdout.strip()
    subprocess.run(["cmake", "-S", MIRROR, "-B", BUILD, "-G", "Ninja", "-DSCRATCHGPT_CUDA=OFF",
                    "-DCMAKE_BUILD_TYPE=Release", f"-DPython_EXECUTABLE={sys.executable}",
                    f"-Dpybind11_DIR={pybind11_dir}", f"-DSCRATCHGPT_OUTPUT_DIR={LIB}"],
                   check=True, stdout=subprocess.DEVNULL)


def build():
    """Build _host from the mirror; returns the module's path, or None (with the log) on failure."""
    run = subprocess.run(["cmake", "--build", BUILD, "--target", "_host", "--parallel", "2"],
                         capture_output=True, text=True)
    if run.returncode != 0:
        return None, run.stdout[-3000:] + run.stderr[-3000:]
    modules = [n for n in os.listdir(LIB) if n.startswith("_host") and n.endswith(".so")]
    return os.path.join(LIB, modules[0]), ""


# ------------------------------------------------------------------------------- the tests
def tests_for(barrier):
    op = os.path.splitext(os.path.basename(barrier.file))[0]
    files = [os.path.join("tests", f"test_{op}_kernel.py"), os.path.join("tests", "test_model_kernels.py")]
    return [f for f in files if os.path.exists(os.path.join(ROOT, f))]


def run_tests(module, files, schedule):
    """(passed, first failure's summary line)."""
    env = dict(os.environ)
    env.update(SCRATCHGPT_HOST_LIB=module, SCRATCH_HOST_SCHEDULE=schedule, SCRATCH_HOST_POISON="1",
               HYPOTHESIS_PROFILE="ci")   # derandomized examples: the same verdict run after run
    env.pop("SCRATCHGPT_EMULATE_CUDA", None)   # the emulated device's module is not the mutant
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *files]
    try:
        run = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=TEST_TIMEOUT)
    except subprocess.TimeoutExpired:
        return False, f"timed out after {TEST_TIMEOUT} s"
    if run.returncode == 0:
        return True, ""
    if run.returncode < 0:
        return False, f"the test process died of signal {-run.returncode}"
    failed = [l for l in run.stdout.splitlines() if l.startswith(("FAILED", "ERROR"))]
    last = (failed or run.stdout.strip().splitlines()[-1:] or [f"pytest exit {run.returncode}"])[0]
    return False, last[:200]


def mutate(text_lines, b):
    line = text_lines[b.line - 1]
    return line[:b.column] + "((void)0)" + line[b.end:]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--list", action="store_true", help="list the barriers and exit")
    ap.add_argument("--check", action="store_true",
                    help="check that every allow-list entry names a barrier, and exit")
    ap.add_argument("--only", action="append", default=[], metavar="FILE:LINE",
                    help="mutate only this barrier (repeatable)")
    ap.add_argument("--rev", help="mutate a git revision's sources instead of the working tree")
    ap.add_argument("--schedules", default=",".join(SCHEDULES),
                    help=f"comma-separated (default {','.join(SCHEDULES)})")
    args = ap.parse_args()

    files = source_files(args.rev)
    barriers = find_barriers(files)
    allowed = read_allow_list(ALLOW_LIST)
    keys = {b.key for b in barriers}
    stale = [k for k in allowed if k not in keys]
    for k in stale:
        print(f"allow-list entry names no barrier: {k[0]} | {k[1]} | {k[2]}")
    uncommented = [b for b in barriers if b.key in allowed and "//" not in b.text]
    for b in uncommented:
        print(f"allow-listed barrier without a comment saying why it stays: {b.where()} {b.text}")
    stale += uncommented

    if args.list or args.check:
        if args.list:
            for b in barriers:
                mark = "  [allowed]" if b.key in allowed else ""
                print(f"{b.where():24s} {b.function:36s} #{b.occurrence} {b.text}{mark}")
            print(f"{len(barriers)} barriers, {sum(b.key in allowed for b in barriers)} allow-listed")
        return 1 if stale else 0

    chosen = barriers
    if args.only:
        wanted = set(args.only)
        chosen = [b for b in barriers if b.where() in wanted]
        missing = wanted - {b.where() for b in chosen}
        if missing:
            sys.exit(f"no barrier at {', '.join(sorted(missing))} (see --list)")
    schedules = [s for s in args.schedules.split(",") if s]

    started = time.time()
    os.makedirs(WORK, exist_ok=True)
    sync_mirror(files)
    configure()
    module, log = build()
    if module is None:
        sys.exit("the unmutated sources do not build:\n" + log)
    for files in sorted({tuple(tests_for(b)) for b in chosen}):   # the tests must pass unmutated
        for schedule in schedules:
            ok, why = run_tests(module, list(files), schedule)
            if not ok:
                sys.exit(f"baseline: {' '.join(files)} fail unmutated under {schedule}: {why}")
    print(f"baseline built and passing ({time.time() - started:.0f} s)", flush=True)

    killed, survivors = [], []
    for b in chosen:
        t0 = time.time()
        path = os.path.join(MIRROR, b.file)
        with open(path) as f:
            original = f.read()
        lines = original.split("\n")
        lines[b.line - 1] = mutate(lines, b)
        try:
            with open(path, "w") as f:
                f.write("\n".join(lines))
            module, log = build()
            if module is None:
                verdict, why = "killed", "does not compile"
            else:
                verdict, why = "survived", ""
                for schedule in schedules:
                    ok, why = run_tests(module, tests_for(b), schedule)
                    if not ok:
                        verdict, why = "killed", f"{schedule}: {why}"
                        break
        finally:
            with open(path, "w") as f:
                f.write(original)
        (killed if verdict == "killed" else survivors).append(b)
        note = ""
        if verdict == "survived":
            note = "  [allowed: " + allowed[b.key] + "]" if b.key in allowed else "  ** SURVIVOR **"
        elif b.key in allowed:
            note = "  (allow-listed, but a test kills it now: the entry can go)"
        print(f"{b.where():24s} {b.call + '()':16s} {b.function:34s} {verdict:8s} "
              f"{time.time() - t0:5.0f} s  {why}{note}", flush=True)
    build()   # leave the mirror's module built from the restored sources

    unexplained = [b for b in survivors if b.key not in allowed]
    print(f"\nscore: {len(killed)} of {len(chosen)} barrier mutants killed; "
          f"{len(survivors) - len(unexplained)} survivors allow-listed, {len(unexplained)} unexplained "
          f"({time.time() - started:.0f} s; schedules {', '.join(schedules)}, poison on)")
    for b in survivors:
        reason = allowed.get(b.key)
        print(f"  survivor {b.where()} ({b.function}) #{b.occurrence} {b.text}"
              + (f"\n      allowed: {reason}" if reason else "\n      NOT on the allow-list"))
    return 1 if unexplained or stale else 0


if __name__ == "__main__":
    sys.exit(main())
