#!/usr/bin/env python3
"""Builds the `cuvisor` wheel from the built binaries (standard library only):

    python3 packaging/build_wheel.py --cuvisor target/release/cuvisor \\
        --shim target/release/libcuvisor_preload.so --out dist/

The wheel holds the `cuvisor` binary and `libcuvisor_preload.so` in the `cuvisor` package
(bin/ and lib/, where the binary finds the shim), and a `cuvisor` command that runs the
binary: `pip install` it, then `cuvisor exec …`, or `LD_PRELOAD=$(cuvisor shim-path)`.
The tag is linux_x86_64: built here, for this machine's glibc (PyPI wants a manylinux
tag, which needs auditwheel's checks: not done yet).
"""
import argparse
import base64
import hashlib
import re
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
INIT = '''"""cuvisor: run many AI models on one GPU. The `cuvisor` command runs the binary this
package carries; `shim_path()` is the LD_PRELOAD shim beside it."""
import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
BINARY = os.path.join(_HERE, "bin", "cuvisor")


def shim_path():
    """The path of libcuvisor_preload.so, for LD_PRELOAD."""
    return os.path.join(_HERE, "lib", "libcuvisor_preload.so")


def main():
    os.execv(BINARY, [BINARY] + sys.argv[1:])
'''


def version():
    text = (REPO / "Cargo.toml").read_text()
    return re.search(r'^version\s*=\s*"([^"]+)"', text, re.M).group(1)


def record_line(name, data):
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(data)}"


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cuvisor", required=True, help="the built cuvisor binary")
    p.add_argument("--shim", required=True, help="the built libcuvisor_preload.so")
    p.add_argument("--out", required=True, help="where the wheel goes")
    a = p.parse_args()
    v = version()
    dist = f"cuvisor-{v}.dist-info"
    files = [
        ("cuvisor/__init__.py", INIT.encode(), 0o644),
        ("cuvisor/bin/cuvisor", Path(a.cuvisor).read_bytes(), 0o755),
        ("cuvisor/lib/libcuvisor_preload.so", Path(a.shim).read_bytes(), 0o755),
        (f"{dist}/METADATA", (
            f"Metadata-Version: 2.1\nName: cuvisor\nVersion: {v}\n"
            "Summary: Run many AI models on one GPU: an LD_PRELOAD shim with per-model GPU "
            "memory quotas and managed memory, and a supervisor\n"
            "License: Apache-2.0\nRequires-Python: >=3.8\n").encode(), 0o644),
        (f"{dist}/WHEEL", (
            "Wheel-Version: 1.0\nGenerator: cuvisor packaging/build_wheel.py\n"
            "Root-Is-Purelib: false\nTag: py3-none-linux_x86_64\n").encode(), 0o644),
        (f"{dist}/entry_points.txt", b"[console_scripts]\ncuvisor = cuvisor:main\n", 0o644),
    ]
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    wheel = out / f"cuvisor-{v}-py3-none-linux_x86_64.whl"
    records = []
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data, mode in files:
            info = zipfile.ZipInfo(name, date_time=(2026, 1, 1, 0, 0, 0))
            info.external_attr = (0o100000 | mode) << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            z.writestr(info, data)
            records.append(record_line(name, data))
        records.append(f"{dist}/RECORD,,")
        info = zipfile.ZipInfo(f"{dist}/RECORD", date_time=(2026, 1, 1, 0, 0, 0))
        info.external_attr = (0o100000 | 0o644) << 16
        z.writestr(info, "\n".join(records) + "\n")
    print(wheel)


if __name__ == "__main__":
    main()
