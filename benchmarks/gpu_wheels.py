"""Wheels for a GPU machine that has torch but no Ray and no network: ``.whl/`` under 64 MiB.

    python benchmarks/gpu_wheels.py [--python 3.12] [--out .whl]

Ray 2.60's wheel (~79 MB) is larger than what travels to the lent GPU machine (64 MiB
with the checkout), so it is rewritten without what maskcrypt never imports: the Java
jar (Ray for Java), RLlib, Ray LLM and the dashboard's web front end (~42 MB left).
Its ``RECORD`` drops the same entries, so ``pip install --no-deps`` installs it like the
original; file modes are kept (the raylet and GCS binaries stay executable). Added: the
dependencies of ``ray[train,tune,data,serve]`` that the machine's image lacks
(jsonschema, pydantic, FastAPI, uvicorn, gRPC reflection, OpenTelemetry and theirs),
pinned to this environment's versions; ~53 MiB in all. ``benchmarks/gpu_session.sh``
installs them into ``/tmp/site`` there.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

RAY = "ray==2.60.0"
#: What ray[train,tune,data,serve] needs beyond the GPU image's packages (torch, pyarrow, pandas, aiohttp, ...).
#: Serve imports gRPC reflection unconditionally: grpcio and protobuf travel too, at the versions of this
#: environment (a reflection module newer than the machine's grpcio refuses to import).
EXTRA = ["jsonschema", "jsonschema-specifications", "referencing", "rpds-py", "pydantic", "pydantic-core",
         "annotated-types", "typing-inspection", "tensorboardX",
         "fastapi", "starlette", "uvicorn", "python-multipart", "watchfiles", "grpcio", "grpcio-reflection", "protobuf",
         "opentelemetry-api", "opentelemetry-sdk", "opentelemetry-semantic-conventions", "opentelemetry-proto",
         "opentelemetry-exporter-prometheus"]


def pinned(name: str) -> str:
    """``name==<version installed here>``, so the machine gets the set this project is tested with; else ``name``."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"{name}=={version(name)}"
    except PackageNotFoundError:
        return name
#: Parts of Ray that maskcrypt never imports.
DROP = ("ray/jars/", "ray/rllib/", "ray/llm/", "ray/dashboard/client/")
PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
             "manylinux1_x86_64"]


def download(names: list[str], python: str, dest: Path) -> None:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--python-version", python,
           "--implementation", "cp", "-d", str(dest)]
    for p in PLATFORMS:
        cmd += ["--platform", p]
    subprocess.run(cmd + names, check=True)


def strip(src: Path, dest: Path) -> None:
    """``src`` without the ``DROP`` folders, in ``RECORD`` too, every entry's attributes (file modes) kept."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dest, "w", zipfile.ZIP_DEFLATED) as zout:
        for info in zin.infolist():
            if info.filename.startswith(DROP):
                continue
            data = zin.read(info.filename)
            if info.filename.endswith(".dist-info/RECORD"):
                data = b"".join(line for line in data.splitlines(True) if not line.decode().startswith(DROP))
            zout.writestr(info, data, compress_type=zipfile.ZIP_DEFLATED, compresslevel=6)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--python", default="3.12", help="the GPU machine's Python (default 3.12)")
    ap.add_argument("--out", type=Path, default=Path(".whl"))
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    download([pinned(n) for n in EXTRA], args.python, args.out)
    with tempfile.TemporaryDirectory() as tmp:
        download([RAY], args.python, Path(tmp))
        (wheel,) = Path(tmp).glob("ray-*.whl")
        strip(wheel, args.out / wheel.name)
    total = sum(f.stat().st_size for f in args.out.glob("*.whl"))
    print(f"{args.out}: {total / 2**20:.1f} MiB of wheels (the checkout travels too: keep the sum under 64 MiB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
