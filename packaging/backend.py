"""cuvisor's PEP 517 build backend: maturin's, with one step first.

maturin builds the `cuvisor` binary (`bindings = "bin"` in pyproject.toml) for
manylinux2014 with zig. It does not build a second crate, and the wheel must also carry
the shim, `libcuvisor_preload.so` (crate `preload/`): so before maturin runs, the shim is
built the same way (cargo-zigbuild, glibc 2.17) and put in the wheel's data directory
(`target/wheel-data/data/lib/cuvisor/`), which installs it as
`<environment>/lib/cuvisor/libcuvisor_preload.so`, where the binary looks beside itself.

Unless MATURIN_PEP517_ARGS says otherwise, maturin gets `--zig --compatibility
manylinux2014` (its own PEP 517 default is the build machine's tag). CARGO_TARGET_DIR is
honoured by both steps.
"""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import maturin
from maturin import (  # noqa: F401 (the hooks this backend passes on unchanged)
    build_sdist,
    get_requires_for_build_sdist,
    get_requires_for_build_wheel,
)

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "target" / "wheel-data"  # [tool.maturin] data
TARGET = "x86_64-unknown-linux-gnu"
GLIBC = "2.17"  # manylinux2014
MATURIN_ARGS = "--zig --compatibility manylinux2014"


def _env():
    """This process's environment, with the zig of the `ziglang` build requirement named
    for cargo-zigbuild and maturin (whatever python3 the PATH has)."""
    env = dict(os.environ)
    try:
        import ziglang

        zig = Path(ziglang.__file__).resolve().parent / "zig"
        if zig.exists():
            env.setdefault("CARGO_ZIGBUILD_ZIG_PATH", str(zig))
    except ImportError:
        pass  # a zig on the PATH, then
    return env


def _build_shim(env):
    """Builds libcuvisor_preload.so for glibc 2.17 and puts it in maturin's `data`
    directory."""
    zigbuild = shutil.which("cargo-zigbuild", path=env.get("PATH")) or "cargo-zigbuild"
    command = [
        zigbuild,
        "zigbuild",
        "--release",
        "--manifest-path",
        str(REPO / "Cargo.toml"),
        "-p",
        "cuvisor-preload",
        "--target",
        f"{TARGET}.{GLIBC}",
    ]
    print("Running `{}`".format(" ".join(command)), file=sys.stderr)
    subprocess.run(command, check=True, env=env, cwd=REPO)
    target_dir = Path(env.get("CARGO_TARGET_DIR", REPO / "target"))
    if not target_dir.is_absolute():
        target_dir = REPO / target_dir
    built = target_dir / TARGET / "release" / "libcuvisor_preload.so"
    if DATA.exists():
        shutil.rmtree(DATA)
    lib = DATA / "data" / "lib" / "cuvisor"
    lib.mkdir(parents=True)
    shutil.copy2(built, lib / "libcuvisor_preload.so")


def prepare_metadata_for_build_wheel(metadata_directory, config_settings=None):
    # maturin reads [tool.maturin] whole: its data directory must exist, empty for now.
    DATA.mkdir(parents=True, exist_ok=True)
    return maturin.prepare_metadata_for_build_wheel(metadata_directory, config_settings)


def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    env = _env()
    env["CUVISOR_FAKE_GPU"] = "off"  # build.rs: the tests' fake GPU is not shipped
    _build_shim(env)
    env.setdefault("MATURIN_PEP517_ARGS", MATURIN_ARGS)
    os.environ.update(env)
    return maturin.build_wheel(wheel_directory, config_settings, metadata_directory)
