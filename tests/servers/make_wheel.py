"""Writes a minimal pure-Python wheel NAME-VERSION (a package whose VERSION is VERSION)
into OUT_DIR, for tests that install packages with no index: python3 make_wheel.py NAME
VERSION OUT_DIR."""
import sys, zipfile, hashlib, base64
name, version, out = sys.argv[1], sys.argv[2], sys.argv[3]
dist = f"{name}-{version}"
files = {
    f"{name}/__init__.py": f"VERSION = {version!r}\n",
    f"{dist}.dist-info/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
    f"{dist}.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: cuvisor-test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
}
record = []
path = f"{out}/{dist}-py3-none-any.whl"
with zipfile.ZipFile(path, "w") as z:
    for n, c in files.items():
        z.writestr(n, c)
        d = base64.urlsafe_b64encode(hashlib.sha256(c.encode()).digest()).rstrip(b"=").decode()
        record.append(f"{n},sha256={d},{len(c)}")
    record.append(f"{dist}.dist-info/RECORD,,")
    z.writestr(f"{dist}.dist-info/RECORD", "\n".join(record) + "\n")
print(path)
