"""Size of the slim runner image's Python environment, built the way the top-level Dockerfile builds it.

    python benchmarks/runner_image.py [--package runs/demo/ours/package] [--data data/synthetic]

Docker cannot run on the development machine, so this follows the Dockerfile's build stage by hand: a fresh
venv, the requirements read from pyproject.toml (core + the EXTRAS of the Dockerfile), the package without
dependencies, the same trimming. It then measures the venv, lists the shared libraries its native modules
need beyond glibc, libstdc++ and zlib (a python:3.11-slim base has those, nothing more is installed), and runs
`inspection run` from that venv alone (cwd outside the checkout, so no source file of the checkout is
importable) on a few frames of the demo package. The same is done for the review image (EXTRAS + review).
Prints the numbers and writes benchmarks/results/runner_image.json.
"""
from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
BASE_LIBS = re.compile(r"^(libc|libm|libdl|libpthread|librt|libresolv|libgcc_s|libstdc\+\+|libz|"
                       r"ld-linux-x86-64|linux-vdso)\.so")
# python:3.11-slim-bookworm, uncompressed, as `docker images` reports it (Docker Hub, 2026-11): not measured here
BASE_IMAGE_MB = 125


def du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def build(venv: Path, extras: list[str]) -> dict:
    """The Dockerfile's build stage, step by step."""
    t0 = time.time()
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "-q", "--disable-pip-version-check", "--no-cache-dir"]
    reqs = subprocess.run([sys.executable, str(ROOT / "docker" / "requirements.py"), *extras], check=True,
                          capture_output=True, text=True).stdout.split()
    subprocess.run([*pip, "install", *reqs], check=True)
    subprocess.run([*pip, "install", "--no-deps", str(ROOT)], check=True, cwd=tempfile.gettempdir())
    subprocess.run(["sh", str(ROOT / "docker" / "trim-venv.sh"), str(venv)], check=True)
    site = next((venv / "lib").glob("python3.*/site-packages"))
    sizes = sorted(((du(p), p.name) for p in site.iterdir() if p.is_dir() and not p.name.endswith("-info")),
                   reverse=True)
    return {"extras": extras, "requirements": reqs, "venv_mb": round(du(venv) / 2**20, 1),
            "build_s": round(time.time() - t0, 1),
            "largest_mb": {name: round(n / 2**20, 1) for n, name in sizes[:6]}, "site": site}


def foreign_libs(venv: Path) -> list[str]:
    """Shared libraries the native modules need that neither the wheels bundle nor a slim base has."""
    missing = set()
    for so in venv.rglob("*.so*"):
        out = subprocess.run(["ldd", str(so)], capture_output=True, text=True).stdout
        for line in out.splitlines():
            name = line.strip().split(" ")[0]
            if "statically linked" in line:
                continue
            if "not found" in line or not (BASE_LIBS.match(name) or "/site-packages/" in line or
                                             "libpython" in name or name.startswith("/")):
                missing.add(f"{so.name}: {line.strip()}")
    return sorted(missing)


def smoke_run(venv: Path, package: Path, data: Path, work: Path) -> dict:
    """`inspection run` from the venv alone, 16 frames, the failure log on SQLite."""
    cmd = [str(venv / "bin" / "inspection"), "run", "--package", str(package), "--set", f"source.path={data}",
           "--set", "source.limit=16", "--set", f"log.folder={work / 'log'}", "--set", "jsonl=",
           "--set", "reload_s=0"]
    r = subprocess.run(cmd, cwd=work, capture_output=True, text=True, env={"PATH": f"{venv / 'bin'}:/usr/bin:/bin"})
    if r.returncode:
        raise SystemExit(f"inspection run failed in the runner venv:\n{r.stderr[-3000:]}")
    summary = json.loads([x for x in r.stderr.splitlines() if x.startswith('{"summary"')][-1])["summary"]
    return {"frames": summary.get("frames_total"), "log_records": summary.get("log_records_total")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--package", default=str(ROOT / "runs/demo/ours/package"))
    ap.add_argument("--data", default=str(ROOT / "data/synthetic"))
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/runner_image.json"))
    args = ap.parse_args()
    extras = re.search(r'ARG EXTRAS="([^"]+)"', DOCKERFILE.read_text()).group(1).split()
    results = {"date": time.strftime("%Y-%m-%d"), "python": sys.version.split()[0],
               "base_image": "python:3.11-slim-bookworm", "base_image_mb_docker_hub": BASE_IMAGE_MB}
    with tempfile.TemporaryDirectory() as tmp:
        for image, ex in (("runner", extras), ("review", [*extras, "review"])):
            venv = Path(tmp) / image
            print(f"{image}: building the venv with extras {ex} ...", file=sys.stderr)
            row = build(venv, ex)
            row.pop("site")
            row["foreign_libs"] = foreign_libs(venv)
            row["torch_installed"] = any((venv / "lib").glob("python3.*/site-packages/torch"))
            if image == "runner":
                work = Path(tmp) / "work"
                work.mkdir()
                row["smoke_run"] = smoke_run(venv, Path(args.package).resolve(), Path(args.data).resolve(), work)
            row["image_mb_estimate"] = round(BASE_IMAGE_MB + row["venv_mb"])
            results[image] = row
            print(f"{image}: venv {row['venv_mb']} MB, image about {row['image_mb_estimate']} MB "
                  f"(base {BASE_IMAGE_MB} MB + venv); largest: {row['largest_mb']}; "
                  f"libraries a slim base lacks: {row['foreign_libs'] or 'none'}; torch: {row['torch_installed']}"
                  + (f"; smoke run: {row['smoke_run']}" if "smoke_run" in row else ""))
    Path(args.out).write_text(json.dumps(results, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
