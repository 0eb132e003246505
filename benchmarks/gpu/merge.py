"""Merge the results/ that a GPU chunk (benchmarks/gpu/chunk.sh) brought back into this checkout's results/.

    python benchmarks/gpu/merge.py <folder with results.tar.gz, or the .tar.gz itself> [--results results]

``*.jsonl`` files get the rows they lack appended (a row is new when its exact JSON line is not there yet, so
merging the same chunk twice adds nothing, and rows written here meanwhile are kept); any other file (logs, plots)
is copied when it is not here. Prints what it added; then regenerate RESULTS.md with recbole_gflowgr.leaderboard.
"""
import argparse
import os
import shutil
import sys
import tarfile
import tempfile


def merge(archive, results="results"):
    """{relative path: number of rows added (jsonl) or 1 (copied file)} for ``archive`` merged into ``results``."""
    added = {}
    with tempfile.TemporaryDirectory() as tmp:
        with tarfile.open(archive) as tar:
            tar.extractall(tmp, filter="data")
        root = os.path.join(tmp, "results")
        if not os.path.isdir(root):
            raise SystemExit(f"error: {archive} holds no results/ folder: not a chunk.sh archive")
        for folder, _, files in os.walk(root):
            for name in files:
                if name.endswith(".pid"):  # the runner's claims of running cells
                    continue
                src = os.path.join(folder, name)
                rel = os.path.relpath(src, root)
                dst = os.path.join(results, rel)
                os.makedirs(os.path.dirname(dst) or ".", exist_ok=True)
                if name.endswith(".jsonl"):
                    have = set()
                    if os.path.isfile(dst):
                        with open(dst) as f:
                            have = {line.strip() for line in f if line.strip()}
                    with open(src) as f:
                        new = [line.strip() for line in f if line.strip() and line.strip() not in have]
                    if new:
                        with open(dst, "a") as f:
                            f.write("".join(line + "\n" for line in new))
                        added[rel] = len(new)
                elif not os.path.exists(dst):
                    shutil.copyfile(src, dst)
                    added[rel] = 1
    return added


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("archive", help="results.tar.gz of a chunk, or the folder holding it (the device's files_at)")
    parser.add_argument("--results", default="results")
    args = parser.parse_args(argv)
    archive = os.path.join(args.archive, "results.tar.gz") if os.path.isdir(args.archive) else args.archive
    if not os.path.isfile(archive):
        print(f"error: {archive} not found", file=sys.stderr)
        return 2
    added = merge(archive, args.results)
    for rel, n in sorted(added.items()):
        print(f"{rel}: {'+%d rows' % n if rel.endswith('.jsonl') else 'new file'}")
    print(f"{sum(n for r, n in added.items() if r.endswith('.jsonl'))} new rows, "
          f"{sum(1 for r in added if not r.endswith('.jsonl'))} new files")
    return 0


if __name__ == "__main__":
    sys.exit(main())
