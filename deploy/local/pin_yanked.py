#!/usr/bin/env python3
"""Write a Cargo.lock that pins a yanked crate and its yanked siblings.

Cargo resolves a yanked version only when a lock file already names it, and `cargo update
--precise` lets only the one package it updates be yanked, not that package's dependencies. The
crabka 0.3.0 crates are all yanked, so this script writes the lock entries itself: for the root
crate at VERSION and, transitively, every dependency whose name starts with PREFIX, pinned to
VERSION, with the checksums cargo's own index cache recorded. Cargo then resolves everything
else around those pins as usual (`cargo fetch` in the manifest's folder).

Usage: pin_yanked.py MANIFEST_DIR ROOT_CRATE VERSION PREFIX

The index entries come from cargo's cache of the sparse index (~/.cargo/registry/index/*/.cache);
a crate missing there is looked up by letting cargo resolve a throwaway manifest that names it.
"""

import glob
import json
import os
import subprocess
import sys
import tempfile

CRATES_IO = "registry+https://github.com/rust-lang/crates.io-index"


def cargo_home():
    return os.environ.get("CARGO_HOME", os.path.expanduser("~/.cargo"))


def index_cache_path(name):
    # The sparse index shards names as 1/, 2/, 3/x/, or ab/cd/ by the first four letters.
    lower = name.lower()
    if len(lower) <= 2:
        shard = f"{len(lower)}"
    elif len(lower) == 3:
        shard = f"3/{lower[0]}"
    else:
        shard = f"{lower[0:2]}/{lower[2:4]}"
    matches = glob.glob(os.path.join(cargo_home(), "registry/index/*/.cache", shard, lower))
    return matches[0] if matches else None


def ask_cargo_to_cache(name):
    """Resolving a manifest that names the crate makes cargo cache its index entry."""
    with tempfile.TemporaryDirectory() as work:
        os.makedirs(os.path.join(work, "src"))
        open(os.path.join(work, "src/lib.rs"), "w").close()
        with open(os.path.join(work, "Cargo.toml"), "w") as manifest:
            manifest.write(
                '[package]\nname = "index-probe"\nversion = "0.0.0"\nedition = "2021"\n'
                f'[dependencies]\n{name} = "*"\n'
            )
        # Resolution may fail (every version yanked): only the cached index entry matters here.
        subprocess.run(["cargo", "generate-lockfile"], cwd=work, check=False,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def index_entry(name, version):
    path = index_cache_path(name)
    if path is None:
        ask_cargo_to_cache(name)
        path = index_cache_path(name)
    if path is None:
        sys.exit(f"pin_yanked: cargo has no index entry for {name}")
    with open(path, "rb") as cache:
        raw = cache.read()
    for chunk in raw.split(b"\0"):
        if not chunk.startswith(b"{"):
            continue
        entry = json.loads(chunk)
        if entry["vers"] == version:
            return entry
    sys.exit(f"pin_yanked: {name} {version} is not in cargo's index cache")


def pinned_closure(root, version, prefix):
    pinned, queue = {}, [root]
    while queue:
        name = queue.pop()
        if name in pinned:
            continue
        entry = index_entry(name, version)
        deps = sorted({
            dep.get("package") or dep["name"]
            for dep in entry["deps"]
            if dep["kind"] != "dev" and (dep.get("package") or dep["name"]).startswith(prefix)
        })
        pinned[name] = (entry["cksum"], deps)
        queue.extend(deps)
    return pinned


def main():
    if len(sys.argv) != 5:
        sys.exit(__doc__)
    manifest_dir, root, version, prefix = sys.argv[1:]
    with open(os.path.join(manifest_dir, "Cargo.toml")) as manifest:
        package_name = next(
            line.split("=", 1)[1].strip().strip('"')
            for line in manifest
            if line.startswith("name")
        )
    pinned = pinned_closure(root, version, prefix)
    lines = ["version = 4", "", "[[package]]", f'name = "{package_name}"', 'version = "0.0.0"',
             f'dependencies = ["{root}"]', ""]
    for name in sorted(pinned):
        checksum, deps = pinned[name]
        lines += ["[[package]]", f'name = "{name}"', f'version = "{version}"',
                  f'source = "{CRATES_IO}"', f'checksum = "{checksum}"']
        if deps:
            lines.append("dependencies = [" + ", ".join(f'"{dep}"' for dep in deps) + "]")
        lines.append("")
    with open(os.path.join(manifest_dir, "Cargo.lock"), "w") as lock:
        lock.write("\n".join(lines))
    print(f"pinned {len(pinned)} crates at {version}: {', '.join(sorted(pinned))}")


if __name__ == "__main__":
    main()
