"""Bench: portal.scans.mesh.inspect() on 50 MB mesh files, beside a plain read of the same file.

Writes, in a temporary folder, a 50 MB binary STL (1,000,000 triangles, 50,000,084 bytes) and a
~50 MB ASCII PLY (a grid of ~790,000 vertices and ~1.58 million triangles), plus, with --all, a
binary little-endian PLY (12 MB), an OBJ (37 MB) and an ASCII STL (41 MB) of an arch-shaped mesh.
Then, interleaved in each round (so load from
elsewhere weighs on every file alike):

  read      the file read in 1 MiB chunks and thrown away (the floor: page cache to Python)
  inspect   mesh.inspect(path): counts, bounding box, centroid, every check

and once per file, under tracemalloc, the peak memory Python and numpy allocate during inspect().

Targets (the product streams files over 50 MB in a background job with progress, so these bound
the job, not a request): binary STL 50 MB <= 1.0 s; ASCII PLY 50 MB <= 4.0 s; peak memory of any
inspect() <= 32 MB, whatever the file size (the reads are bounded by mesh.CHUNK_SIZE).

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

TARGET_S = {"binary STL": 1.0, "ASCII PLY": 4.0}
TARGET_PEAK = 32 * 1024**2
SIZE = 50_000_000


def write_files(folder: Path, everything: bool) -> dict[str, Path]:
    files = {"binary STL": M.big_binary_stl(folder / "big.stl", 1_000_000),
             "ASCII PLY": M.big_ascii_ply(folder / "big.ply", SIZE)[0]}
    if everything:
        vertices, faces = M.arch("upper", segments=2_600, across=110)  # ~570,000 triangles
        files["binary PLY"] = M.write(folder / "big_bin.ply", M.ply(vertices, faces, "binary_little_endian", colors=True))
        files["OBJ"] = M.write(folder / "big.obj", M.obj(vertices, faces, "full"))
        tris = M.corners(vertices, faces)[: SIZE // 260]  # ~260 bytes a facet
        files["ASCII STL"] = M.write(folder / "big_ascii.stl", M.ascii_stl(tris))
    return files


def plain_read(path: Path) -> None:
    with open(path, "rb") as f:
        while f.read(mesh.CHUNK_SIZE):
            pass


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--all", action="store_true", help="also binary PLY, OBJ and ASCII STL")
    parser.add_argument("--keep", type=Path, help="write the files here and keep them")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        folder = args.keep or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        files = write_files(folder, args.all)
        print(f"wrote {len(files)} files in {time.perf_counter() - started:.1f} s\n")
        infos = {name: mesh.inspect(path) for name, path in files.items()}  # warm the page cache
        times: dict[tuple[str, str], list[float]] = {}
        for _ in range(args.runs):
            for name, path in files.items():
                for what, fn in (("read", lambda: plain_read(path)), ("inspect", lambda: mesh.inspect(path))):
                    t = time.perf_counter()
                    fn()
                    times.setdefault((name, what), []).append(time.perf_counter() - t)
        peaks = {}
        for name, path in files.items():
            tracemalloc.start()
            mesh.inspect(path)
            peaks[name] = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()

    ok = True
    print(f"{'file':<11} {'MB':>6} {'triangles':>10} {'vertices':>10} {'read s':>7} {'inspect s':>9} "
          f"{'min s':>6} {'MB/s':>6} {'peak MB':>7}  target")
    for name, path_info in infos.items():
        read = statistics.median(times[(name, "read")])
        spent = times[(name, "inspect")]
        med = statistics.median(spent)
        target = TARGET_S.get(name)
        verdict = []
        if target is not None:
            verdict.append(f"<= {target:.1f} s {'PASS' if med <= target else 'MISS'}")
            ok &= med <= target
        verdict.append(f"peak {'PASS' if peaks[name] <= TARGET_PEAK else 'MISS'}")
        ok &= peaks[name] <= TARGET_PEAK
        print(f"{name:<11} {path_info.size_bytes / 1e6:6.1f} {path_info.triangle_count:10,} {path_info.vertex_count:10,} "
              f"{read:7.3f} {med:9.3f} {min(spent):6.3f} {path_info.size_bytes / 1e6 / med:6.0f} "
              f"{peaks[name] / 1024**2:7.1f}  {'; '.join(verdict)}")
    print("\nPASS" if ok else "\nMISS")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
