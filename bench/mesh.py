"""Bench: portal.scans.mesh.inspect() on 50 MB mesh files, beside a plain read of the same file and,
when it is installed (`pip install -e '.[bench]'`), numpy-stl reading the same STL files.

Writes, in a temporary folder, a 50 MB binary STL (1,000,000 triangles, 50,000,084 bytes), a ~50 MB
ASCII STL of an arch-shaped mesh (~232,000 facets) and a ~50 MB ASCII PLY (a grid of ~790,000
vertices and ~1.58 million triangles), plus, with --all, a binary little-endian PLY (12 MB) and an
OBJ (37 MB). Then, interleaved in each round (so load from elsewhere weighs on every file alike):

  read       the file read in 1 MiB chunks and thrown away (the floor: page cache to Python)
  inspect    mesh.inspect(path): counts, bounding box, centroid, every check
  numpy-stl  stl.mesh.Mesh.from_file(path) (STL only): loads the whole file into arrays and
             computes no bounding box nor centroid

and once per file, under tracemalloc, the peak memory Python and numpy allocate during inspect(),
plus the peak for binary STLs of 10 MB and 100 MB (flat: the reads are bounded by mesh.CHUNK_SIZE).

Targets (the product streams files over SCAN_BACKGROUND_MB in a background job with progress, so
these bound the job, not a request): binary STL >= 250 MB/s; ASCII STL >= 60 MB/s; ASCII PLY 50 MB
<= 4.0 s; peak memory of any inspect() <= 32 MB, whatever the file size. MB/s is the file's size
over the median inspect() time.

    .venv/bin/python bench/mesh.py [--runs 5] [--all] [--keep DIR]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from portal.scans import mesh  # noqa: E402
from tests.scans import meshes as M  # noqa: E402

try:
    from stl import mesh as numpy_stl  # numpy-stl, only in the bench extra
except ImportError:  # pragma: no cover
    numpy_stl = None

TARGET_S = {"ASCII PLY": 4.0}
TARGET_MBS = {"binary STL": 250.0, "ASCII STL": 60.0}
TARGET_PEAK = 32 * 1024**2
SIZE = 50_000_000


def write_files(folder: Path, everything: bool) -> dict[str, Path]:
    vertices, faces = M.arch("upper", segments=2_600, across=110)  # ~570,000 triangles
    files = {"binary STL": M.big_binary_stl(folder / "big.stl", 1_000_000)}
    tris = M.corners(vertices, faces)[: SIZE // 215]  # ~215 bytes a facet
    files["ASCII STL"] = M.write(folder / "big_ascii.stl", M.ascii_stl(tris))
    files["ASCII PLY"] = M.big_ascii_ply(folder / "big.ply", SIZE)[0]
    if everything:
        files["binary PLY"] = M.write(folder / "big_bin.ply", M.ply(vertices, faces, "binary_little_endian", colors=True))
        files["OBJ"] = M.write(folder / "big.obj", M.obj(vertices, faces, "full"))
    return files


def plain_read(path: Path) -> None:
    with open(path, "rb") as f:
        while f.read(mesh.CHUNK_SIZE):
            pass


def peak(path: Path) -> int:
    tracemalloc.start()
    mesh.inspect(path)
    top = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return top


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--all", action="store_true", help="also binary PLY and OBJ")
    parser.add_argument("--keep", type=Path, help="write the files here and keep them")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        folder = args.keep or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        files = write_files(folder, args.all)
        print(f"wrote {len(files)} files in {time.perf_counter() - started:.1f} s"
              f"{'' if numpy_stl else '; numpy-stl is not installed (pip install -e .[bench]): no comparison'}\n")
        infos = {name: mesh.inspect(path) for name, path in files.items()}  # warm the page cache
        times: dict[tuple[str, str], list[float]] = {}
        for _ in range(args.runs):
            for name, path in files.items():
                rivals = [("read", lambda: plain_read(path)), ("inspect", lambda: mesh.inspect(path))]
                if numpy_stl is not None and name.endswith("STL"):
                    rivals.append(("numpy-stl", lambda: numpy_stl.Mesh.from_file(str(path))))
                for what, fn in rivals:
                    t = time.perf_counter()
                    fn()
                    times.setdefault((name, what), []).append(time.perf_counter() - t)
        peaks = {name: peak(path) for name, path in files.items()}
        flat = {}
        for mb in (10, 100):
            path = M.big_binary_stl(folder / f"flat_{mb}.stl", mb * 20_000)
            flat[mb] = peak(path)
            path.unlink()

    ok = True
    print(f"{'file':<11} {'MB':>6} {'triangles':>10} {'vertices':>10} {'read s':>7} {'inspect s':>9} "
          f"{'min s':>6} {'MB/s':>6} {'peak MB':>7} {'numpy-stl MB/s':>14}  target")
    for name, info in infos.items():
        size_mb = info.size_bytes / 1e6
        read = statistics.median(times[(name, "read")])
        spent = times[(name, "inspect")]
        med = statistics.median(spent)
        rate = size_mb / med
        verdict = []
        if name in TARGET_S:
            verdict.append(f"<= {TARGET_S[name]:.1f} s {'PASS' if med <= TARGET_S[name] else 'MISS'}")
            ok &= med <= TARGET_S[name]
        if name in TARGET_MBS:
            verdict.append(f">= {TARGET_MBS[name]:.0f} MB/s {'PASS' if rate >= TARGET_MBS[name] else 'MISS'}")
            ok &= rate >= TARGET_MBS[name]
        verdict.append(f"peak {'PASS' if peaks[name] <= TARGET_PEAK else 'MISS'}")
        ok &= peaks[name] <= TARGET_PEAK
        rival = times.get((name, "numpy-stl"))
        rival_text = f"{size_mb / statistics.median(rival):6.0f} ({rate / (size_mb / statistics.median(rival)):.1f}x)" \
            if rival else "-"
        print(f"{name:<11} {size_mb:6.1f} {info.triangle_count:10,} {info.vertex_count:10,} "
              f"{read:7.3f} {med:9.3f} {min(spent):6.3f} {rate:6.0f} "
              f"{peaks[name] / 1024**2:7.1f} {rival_text:>14}  {'; '.join(verdict)}")
    flat_ok = all(p <= TARGET_PEAK for p in flat.values())
    ok &= flat_ok
    print(f"\npeak of inspect() on binary STLs: 10 MB {flat[10] / 1024**2:.1f} MB, 100 MB {flat[100] / 1024**2:.1f} MB"
          f"  {'PASS' if flat_ok else 'MISS'}")
    print("\nPASS" if ok else "\nMISS")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
