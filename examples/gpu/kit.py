#!/usr/bin/env python3
"""cuvisor's real-GPU validation kit (see README.md beside this file).

    python3 examples/gpu/kit.py PART --out DIR [--shim SO] [--cuvisor BIN] [--fake STUB_DIR]

PART: env, interception, oversubscription, cost, hibernate, summary (run.sh runs them all).
Every part appends its records to DIR/PART.jsonl, the raw output of every command it
runs to DIR/raw.log and the long-lived workers' stderr to DIR/workers.log; `summary` turns the records into DIR/results.md. With --fake the
kit runs against the fake GPU (no NVIDIA hardware): only what needs no framework, so that
its own logic is tested in CI.
"""
import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

KIT = Path(__file__).resolve().parent
REPO = KIT.parent.parent
MiB, GiB = 1 << 20, 1 << 30
FRAMEWORK_CASES = [
    # (case, framework, extra environment)
    ("torch-native", "torch", {}),
    ("torch-expandable-segments", "torch", {"PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True"}),
    ("torch-cudaMallocAsync", "torch", {"PYTORCH_CUDA_ALLOC_CONF": "backend:cudaMallocAsync"}),
    ("cupy", "cupy", {}),
    ("jax-default-preallocation", "jax", {}),
]


class Kit:
    def __init__(self, a):
        self.out = Path(a.out).resolve()
        self.out.mkdir(parents=True, exist_ok=True)
        self.fake = Path(a.fake).resolve() if a.fake else None
        self.shim = Path(a.shim).resolve()
        self.cuvisor = Path(a.cuvisor).resolve()
        for what, p in [("the shim", self.shim), ("the cuvisor binary", self.cuvisor)]:
            if not p.is_file():
                sys.exit(f"kit: {what} is not at {p}: build it (cargo build --release) or pass its path")
        self.ledgers = Path(tempfile.mkdtemp(prefix="cuvisor-kit-ledgers-"))
        # Built programs stay out of DIR: only results come back from a GPU machine.
        self.bin = Path(tempfile.mkdtemp(prefix="cuvisor-kit-bin-"))
        self.raw = open(self.out / "raw.log", "a")

    # ---- running things -----------------------------------------------------------------

    def env(self, extra=None):
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("CUVISOR_", "FAKE_CUDA_")) and k != "LD_PRELOAD"}
        if self.fake:
            env["LD_LIBRARY_PATH"] = str(self.fake)
        env.update(extra or {})
        return env

    def run(self, label, cmd, extra_env=None, timeout=300, stdin=None):
        started = time.time()
        try:
            p = subprocess.run([str(c) for c in cmd], env=self.env(extra_env), input=stdin,
                               capture_output=True, text=True, timeout=timeout)
            rc, out, err = p.returncode, p.stdout, p.stderr
        except subprocess.TimeoutExpired as e:
            rc, out, err = "timeout", e.stdout or "", (e.stderr or "") + f"\nkit: timed out after {timeout} s"
            out = out.decode() if isinstance(out, bytes) else out
            err = err.decode() if isinstance(err, bytes) else err
        self.raw.write(f"==== {label}: {' '.join(map(str, cmd))}\n"
                       f"env: {json.dumps(extra_env or {})}\nexit: {rc} after {time.time() - started:.1f} s\n"
                       f"---- stdout\n{out}---- stderr\n{err}\n")
        self.raw.flush()
        return rc, out, err

    def under_cuvisor(self, model, quota, cmd, mode="managed", hibernate=False):
        """`cuvisor exec` of cmd with the model's quota, the shim logging its paths."""
        return [self.cuvisor, "exec", "--model", model, "--quota", str(quota), "--mode", mode,
                "--shim", self.shim, "--dir", self.ledgers, *(["--hibernate"] if hibernate else []),
                "--", *cmd]

    def power(self, model, action):
        """`cuvisor ledger hibernate` or `wake` of a model: its JSON report."""
        rc, out, err = self.run(f"{action} {model}", [self.cuvisor, "ledger", action, "--model", model,
                                                      "--dir", self.ledgers, "--json"], timeout=120)
        try:
            return json.loads(out)
        except ValueError:
            return {"outcome": "failed", "error": f"exit {rc}: {(out + err)[-400:]}"}

    def record(self, part, **fields):
        fields["part"] = part
        with open(self.out / f"{part}.jsonl", "a") as f:
            f.write(json.dumps(fields) + "\n")
        print(f"kit: {part}: {json.dumps(fields)}", flush=True)

    def python_worker(self, *args):
        return [sys.executable, KIT / "workers.py", *map(str, args)]


def paths_used(stderr):
    """The shim's exit lines: which wrappers each resolution path handed out."""
    used = {}
    for line in stderr.splitlines():
        m = re.match(r"cuvisor: info: wrappers handed out through (\S+): (.*)", line)
        if m:
            used[m.group(1)] = dict(kv.split("=") for kv in m.group(2).split())
        elif "no wrapper was handed out" in line:
            used["direct binding only"] = {}
    return used


# ---- part: env ---------------------------------------------------------------------------

def part_env(kit):
    facts = {}
    for name, cmd in [
        ("gpu", ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"]),
        ("nvcc", ["nvcc", "--version"]),
        ("kernel", ["uname", "-r"]),
    ]:
        try:
            rc, out, err = kit.run(f"env {name}", cmd, timeout=60)
            facts[name] = out.strip().splitlines()[-1] if rc == 0 and out.strip() else f"exit {rc}: {err.strip()[:200]}"
        except FileNotFoundError:
            facts[name] = "not installed"
    for module in ["torch", "cupy", "jax", "transformers"]:
        rc, out, err = kit.run(f"env {module}", [sys.executable, "-c", f"import {module}; print({module}.__version__)"], timeout=120)
        facts[module] = out.strip() if rc == 0 else "not importable"
    facts["python"] = sys.version.split()[0]
    facts["shim"] = str(kit.shim)
    kit.record("env", **facts)


# ---- part: interception ------------------------------------------------------------------

def find_libcuda():
    if shutil.which("ldconfig"):
        out = subprocess.run(["ldconfig", "-p"], capture_output=True, text=True).stdout
        for line in out.splitlines():
            if "libcuda.so.1 " in line and "x86-64" in line:
                return line.split("=>")[-1].strip()
    for d in ["/usr/local/nvidia/lib64", "/usr/lib/x86_64-linux-gnu", "/usr/lib64"]:
        if Path(d, "libcuda.so.1").exists():
            return str(Path(d, "libcuda.so.1"))
    return None


def build_programs(kit):
    """The driver-API probe three ways (direct binding, dlsym, cuGetProcAddress) and the
    runtime client with NVIDIA's static and shared cudart (the fake has only a shared one).
    Returns {case: path, or 'skipped: why' (a tool missing), or 'failed: why'}."""
    programs = {}
    probe = REPO / "cuda_stubs/probes/driver_probe.c"
    libcuda = str(kit.fake / "libcuda.so.1") if kit.fake else find_libcuda()
    cc = shutil.which("gcc") or shutil.which("cc")
    for case, flags, link in [
        ("driver-api-direct", [], [libcuda]),
        ("driver-api-dlsym", ["-DBIND_DLSYM"], []),
        ("driver-api-cuGetProcAddress", ["-DBIND_PROCADDR"], []),
    ]:
        if not cc or (link and not link[0]):
            programs[case] = "skipped: " + ("no C compiler" if not cc else "libcuda.so.1 not found")
            continue
        exe = kit.bin / case
        rc, _, err = kit.run(f"build {case}", [cc, "-std=gnu11", "-D_GNU_SOURCE", "-O1", "-o", exe, probe, *flags, *link, "-ldl", "-lpthread"])
        programs[case] = exe if rc == 0 else f"failed: build: {err.strip()[:300]}"
    source = KIT / "rt_alloc.c"
    if kit.fake:
        exe = kit.bin / "runtime-shared-cudart"
        rc, _, err = kit.run("build runtime", [cc, "-o", exe, source, kit.fake / "libcudart.so.12"])
        programs["runtime-shared-cudart"] = exe if rc == 0 else f"failed: build: {err.strip()[:300]}"
        programs["runtime-static-cudart"] = "skipped: the fake GPU has no static cudart"
    else:
        nvcc = shutil.which("nvcc")
        for case, flags in [("runtime-static-cudart", []), ("runtime-shared-cudart", ["-cudart", "shared"])]:
            if not nvcc:
                programs[case] = "skipped: nvcc not found"
                continue
            exe = kit.bin / case
            rc, _, err = kit.run(f"build {case}", [nvcc, *flags, "-o", exe, source])
            programs[case] = exe if rc == 0 else f"failed: build: {err.strip()[:300]}"
    return programs


def check_c_case(kit, case, exe, quota, chunk):
    driver = case.startswith("driver")
    count = quota // chunk + 2
    script = (["init"] if driver else []) + ["info"] + ["alloc", str(chunk)] * count + ["info"]
    rc, out, err = kit.run(case, kit.under_cuvisor(f"kit-{case}", quota, [exe, *script]),
                           extra_env={"CUVISOR_LOG": "info"})
    allocs = [int(m.group(1)) for m in re.finditer(r"^alloc \S+ -> (\d+)", out, re.M)]
    infos = [tuple(map(int, m.groups())) for m in re.finditer(r"^info -> 0 (\d+) (\d+)", out, re.M)]
    fitted = next((i for i, r in enumerate(allocs) if r != 0), len(allocs))
    refusal = allocs[fitted] if fitted < len(allocs) else None
    # CUDA_ERROR_OUT_OF_MEMORY (2) from the driver API, cudaErrorMemoryAllocation (2) from the runtime.
    ok = (rc == 0 and fitted * chunk == quota and refusal == 2 and len(infos) == 2
          and infos[0] == (quota, quota) and infos[1] == (0, quota))
    kit.record("interception", case=case, ok=ok, quota=quota, chunk=chunk, exit=rc,
               allocated=fitted * chunk, refusal_code=refusal,
               info_before=infos[0] if infos else None, info_after=infos[-1] if len(infos) > 1 else None,
               paths=paths_used(err), failure=None if ok else (out + err)[-600:])


def check_framework_case(kit, case, framework, extra, quota, chunk):
    rc, out, err = kit.run(f"{case} import", [sys.executable, "-c", f"import {framework}"], timeout=120)
    if rc != 0:
        kit.record("interception", case=case, ok=None, skipped=f"{framework} is not importable")
        return
    env = dict(extra, CUVISOR_LOG="info")
    rc, out, err = kit.run(case, kit.under_cuvisor(f"kit-{case}", quota, kit.python_worker(
        "alloc", framework, "--chunk", chunk, "--limit", 2 * quota)), extra_env=env, timeout=600)
    try:
        r = json.loads(out.strip().splitlines()[-1])
    except (ValueError, IndexError):
        kit.record("interception", case=case, ok=False, exit=rc, failure=(out + err)[-600:])
        return
    q, nvml, error = r["query"], r["nvml"], r["error"] or {}
    own_error = {
        "torch": "OutOfMemoryError" in error.get("type", ""),
        "cupy": "OutOfMemoryError" in error.get("type", ""),
        "jax": "RESOURCE_EXHAUSTED" in error.get("message", ""),
    }[framework]
    if framework == "jax":
        # Preallocation takes 75% of what the driver reports: of the quota, not the GPU.
        virtual = q.get("bytes_limit") is not None and q["bytes_limit"] <= quota
    else:
        virtual = q.get("total") == quota and q.get("free", quota + 1) <= quota
    nvml_virtual = nvml.get("total") == quota
    at_quota = r["allocated"] <= quota and (framework == "jax" or r["allocated"] >= quota - 4 * chunk)
    ok = own_error and virtual and at_quota
    kit.record("interception", case=case, ok=ok, quota=quota, chunk=chunk, exit=rc,
               allocated=r["allocated"], error=error, own_oom_error=own_error, query=q,
               virtual_query=virtual, nvml=nvml, nvml_virtual=nvml_virtual, paths=paths_used(err),
               failure=None if ok else err[-600:])


def part_interception(kit):
    quota, chunk = (64 * MiB, 4 * MiB) if kit.fake else (4 * GiB, 256 * MiB)
    for case, exe in build_programs(kit).items():
        if isinstance(exe, str) and exe.startswith("failed: "):
            kit.record("interception", case=case, ok=False, failure=exe[len("failed: "):])
        elif isinstance(exe, str):
            kit.record("interception", case=case, ok=None, skipped=exe[len("skipped: "):])
        else:
            check_c_case(kit, case, exe, quota, chunk)
    for case, framework, extra in FRAMEWORK_CASES:
        if kit.fake:
            kit.record("interception", case=case, ok=None, skipped="frameworks run on a real GPU only")
        else:
            check_framework_case(kit, case, framework, extra, quota, chunk)


# ---- parts that need a real GPU ----------------------------------------------------------

class Workers:
    """Long-lived `workers.py hold` processes, driven one command at a time."""

    def __init__(self, kit):
        self.kit, self.procs = kit, []

    def start(self, label, cmd, extra_env=None):
        # One file for every worker's stderr (few files come back from a GPU machine).
        log = open(self.kit.out / "workers.log", "a")
        log.write(f"==== {label}: {' '.join(map(str, cmd))}\n")
        log.flush()
        p = subprocess.Popen([str(c) for c in cmd], env=self.kit.env(extra_env), stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=log, text=True, bufsize=1)
        self.procs.append(p)
        return p, self.read(p)

    @staticmethod
    def read(p):
        line = p.stdout.readline()
        return json.loads(line) if line.strip() else {"ready": False, "error": "exited", "exit": p.poll()}

    def ask(self, p, command):
        p.stdin.write(command + "\n")
        p.stdin.flush()
        return self.read(p)

    def stop_all(self):
        for p in self.procs:
            try:
                p.stdin.close()
            except OSError:
                pass
        for p in self.procs:
            try:
                p.wait(timeout=60)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self.procs = []


def physical(kit):
    rc, out, err = kit.run("physical", kit.python_worker("physical"), timeout=120)
    return json.loads(out.strip().splitlines()[-1])


def with_ballast(kit, workers, usable):
    """Takes all but `usable` bytes of the GPU with plain device memory."""
    free = physical(kit)["free"]
    size = free - usable
    if size > 0:
        _, ready = workers.start("ballast", kit.python_worker("ballast", "--bytes", size))
        if not ready.get("ready"):
            raise SystemExit(f"kit: the ballast of {size} bytes failed: {ready}")
    return size


def part_oversubscription(kit, usable):
    if kit.fake:
        kit.record("oversubscription", ok=None, skipped="needs a real GPU and PyTorch")
        return
    for n in (2, 4):
        for shim in (True, False):
            workers = Workers(kit)
            try:
                ballast = with_ballast(kit, workers, usable)
                quota = int(usable * 0.75)  # n quotas add up to 0.75 n of the usable memory
                hold = int(quota * 0.9)
                models, failures = [], []
                for i in range(n):
                    cmd = kit.python_worker("hold", "--bytes", hold, "--seed", i)
                    if shim:
                        cmd = kit.under_cuvisor(f"kit-over-{n}-{i}", quota, cmd)
                    p, ready = workers.start(f"over-{n}-{'shim' if shim else 'plain'}-{i}", cmd)
                    (models if ready.get("ready") else failures).append((i, p, ready))
                rounds = []
                if not failures:
                    for turn in range(3 * n):
                        i, p, _ = models[turn % n]
                        rounds.append(dict(model=i, **workers.ask(p, "work 2")))
                if shim:
                    ok = not failures and all(r.get("ok") for r in rounds)
                else:  # the same set without the shim must run out of memory
                    ok = any(r.get("out_of_memory") for _, _, r in failures)
                kit.record("oversubscription", processes=n, shim=shim, ok=ok, usable=usable,
                           ballast=ballast, quota_each=quota, held_each=hold,
                           quotas_over_usable=round(n * quota / usable, 2), rounds=rounds,
                           failures=[{"model": i, **r} for i, _, r in failures])
            finally:
                workers.stop_all()


def part_cost(kit, usable, page_bytes):
    if kit.fake:
        kit.record("cost", ok=None, skipped="needs a real GPU and PyTorch")
        return
    hold = 4 * GiB
    for mode, prefetch in [("none", None), ("device", None), ("managed", "off"), ("managed", "on")]:
        workers = Workers(kit)
        try:
            cmd = kit.python_worker("hold", "--bytes", hold, "--seed", 7)
            env = {}
            if mode != "none":
                cmd = kit.under_cuvisor(f"kit-cost-{mode}-{prefetch}", 16 * GiB, cmd, mode=mode)
                env = {"CUVISOR_PREFETCH": prefetch} if prefetch else {}
            p, ready = workers.start(f"cost-{mode}-{prefetch}", cmd, env)
            warm = workers.ask(p, "work 3")
            timed = workers.ask(p, "work 20")
            kit.record("cost", measure="throughput", mode=mode, prefetch=prefetch, ok=timed.get("ok"),
                       rounds_per_second=20 / timed["seconds"] if timed.get("seconds") else None,
                       warmup=warm, timed=timed)
        finally:
            workers.stop_all()
    # Paging an idle model back in, against the copy bandwidth of the same machine.
    rc, out, err = kit.run("h2d", kit.python_worker("h2d", "--bytes", page_bytes))
    h2d = json.loads(out.strip().splitlines()[-1])
    kit.record("cost", measure="pinned host-to-device copy", bytes=page_bytes, seconds=h2d["seconds"],
               gb_per_second=page_bytes / h2d["seconds"] / 1e9, ok=True)
    workers = Workers(kit)
    try:
        with_ballast(kit, workers, usable)
        a, ready = workers.start("page-a", kit.under_cuvisor("kit-page-a", 2 * page_bytes, kit.python_worker(
            "hold", "--bytes", page_bytes, "--seed", 3)))
        resident = workers.ask(a, "work 1")
        results = {"resident_round": resident}
        for how in ("fault", "prefetch"):
            b, touched = workers.start(f"page-b-{how}", kit.under_cuvisor(f"kit-page-b-{how}", usable, kit.python_worker(
                "touch", "--bytes", usable - 2 * GiB)))
            b.stdin.close()
            b.wait(timeout=300)
            if how == "prefetch":
                results["prefetch"] = workers.ask(a, "prefetch")
            results[f"after_eviction_{how}"] = workers.ask(a, "work 1")
            results[f"evictor_{how}"] = touched
        back = results["after_eviction_fault"]["seconds"] - resident["seconds"]
        kit.record("cost", measure="idle model paged back in", bytes=page_bytes,
                   ok=all(r.get("ok", True) for r in results.values() if isinstance(r, dict)),
                   fault_driven_extra_seconds=back,
                   prefetch_seconds=results["prefetch"].get("seconds"),
                   h2d_seconds=h2d["seconds"], detail=results)
    finally:
        workers.stop_all()


# ---- part: hibernate ---------------------------------------------------------------------

def part_hibernate(kit, page_bytes):
    """A model holding `page_bytes` hibernated and woken by `cuvisor ledger`: the swap-in
    time against the host-to-device copy bandwidth of the same machine (Omni: 5 GB in about
    156 ms over PCIe 4.0; the goal on PCIe 5 is under 100 ms), and the first request of a
    woken model against one left to fault its pages back. On the fake GPU: the C probe
    holds 64 MiB, and only the moves are checked (copies there take no time)."""
    size = 64 * MiB if kit.fake else page_bytes
    model = "kit-swap"
    if kit.fake:
        exe = kit.bin / "hibernate-probe"
        cc = shutil.which("gcc") or shutil.which("cc")
        rc, _, err = kit.run("build hibernate-probe", [cc, "-std=gnu11", "-D_GNU_SOURCE", "-O1", "-o", exe,
                                                       REPO / "cuda_stubs/probes/driver_probe.c",
                                                       kit.fake / "libcuda.so.1", "-ldl", "-lpthread"])
        if rc != 0:
            kit.record("hibernate", ok=False, failure=f"build: {err.strip()[:300]}")
            return
        p = subprocess.Popen([str(c) for c in kit.under_cuvisor(model, 2 * size, [
            exe, "init", "alloc", str(size), "memset", "0", "wait"], hibernate=True)],
            env=kit.env(), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        held = [p.stdout.readline().strip() for _ in range(3)]
        if held[-1] != "memset 0 -> 0 ok":
            p.kill()
            kit.record("hibernate", ok=False, failure=f"the probe: {held} {p.stderr.read()[-400:]}")
            return
        out, back = kit.power(model, "hibernate"), kit.power(model, "wake")
        p.communicate("\n", timeout=60)
        ok = all(r.get("outcome") == "done" and r.get("moved_bytes") == size for r in (out, back))
        kit.record("hibernate", ok=ok, bytes=size, hibernate=out, wake=back,
                   failure=None if ok else "a move did not complete")
        return
    rc, out, err = kit.run("h2d", kit.python_worker("h2d", "--bytes", size))
    h2d = json.loads(out.strip().splitlines()[-1])
    workers = Workers(kit)
    try:
        p, ready = workers.start("swap", kit.under_cuvisor(model, 2 * size, kit.python_worker(
            "hold", "--bytes", size, "--seed", 5), hibernate=True))
        if not ready.get("ready"):
            kit.record("hibernate", ok=False, failure=f"the model did not start: {ready}")
            return
        resident = workers.ask(p, "work 1")
        out = kit.power(model, "hibernate")
        back = kit.power(model, "wake")
        after_wake = workers.ask(p, "work 1")
        out_again = kit.power(model, "hibernate")
        faulting = workers.ask(p, "work 1")  # no wake: the driver faults the pages back
        kit.power(model, "wake")
        swap_in = back.get("duration_ms", 0) / 1000
        ok = (all(r.get("outcome") == "done" for r in (out, back, out_again))
              and back.get("moved_bytes", 0) >= 0.95 * size
              and all(r.get("ok") for r in (resident, after_wake, faulting)))
        kit.record("hibernate", ok=ok, bytes=size,
                   moved_out=out.get("moved_bytes"), moved_in=back.get("moved_bytes"),
                   pinned=out.get("pinned_bytes"),
                   swap_out_seconds=out.get("duration_ms", 0) / 1000, swap_in_seconds=swap_in,
                   swap_in_gb_per_second=back.get("moved_bytes", 0) / swap_in / 1e9 if swap_in else None,
                   h2d_seconds=h2d["seconds"], h2d_gb_per_second=size / h2d["seconds"] / 1e9,
                   swap_in_over_h2d=swap_in / h2d["seconds"] if h2d["seconds"] else None,
                   resident_round_seconds=resident.get("seconds"),
                   first_round_after_wake_seconds=after_wake.get("seconds"),
                   first_round_faulting_seconds=faulting.get("seconds"),
                   detail={"hibernate": out, "wake": back})
    finally:
        workers.stop_all()


# ---- summary -----------------------------------------------------------------------------

def part_summary(kit):
    lines = ["# cuvisor real-GPU kit results", ""]
    for part in ["env", "interception", "oversubscription", "cost", "hibernate"]:
        path = kit.out / f"{part}.jsonl"
        if not path.exists():
            continue
        lines += [f"## {part}", "", "```"]
        for rec in map(json.loads, path.read_text().splitlines()):
            rec.pop("part", None)
            verdict = {True: "PASS", False: "FAIL", None: "SKIP"}.get(rec.pop("ok", None), "-") if part != "env" else "INFO"
            lines.append(f"{verdict:4} {json.dumps(rec)[:1500]}")
        lines += ["```", ""]
    (kit.out / "results.md").write_text("\n".join(lines))
    print(f"kit: results in {kit.out / 'results.md'}")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("part", choices=["env", "interception", "oversubscription", "cost", "hibernate", "summary"])
    p.add_argument("--out", required=True)
    p.add_argument("--shim", default=REPO / "target/release/libcuvisor_preload.so")
    p.add_argument("--cuvisor", default=REPO / "target/release/cuvisor")
    p.add_argument("--fake", help="the fake GPU's directory (CUDA_STUB_DIR): test the kit without a GPU")
    p.add_argument("--usable", type=int, default=16 * GiB,
                   help="GPU memory left to the models next to the ballast (oversubscription, cost)")
    p.add_argument("--page-bytes", type=int, default=5 * 10**9, help="the idle model's size (cost, hibernate)")
    a = p.parse_args()
    kit = Kit(a)
    try:
        {"env": part_env, "interception": part_interception, "summary": part_summary,
         "oversubscription": lambda k: part_oversubscription(k, a.usable),
         "cost": lambda k: part_cost(k, a.usable, a.page_bytes),
         "hibernate": lambda k: part_hibernate(k, a.page_bytes)}[a.part](kit)
    finally:
        shutil.rmtree(kit.ledgers, ignore_errors=True)
        shutil.rmtree(kit.bin, ignore_errors=True)


if __name__ == "__main__":
    main()
