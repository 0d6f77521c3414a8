"""The artifact format: a directory with manifest.json, the compiled code and the weights.

Pure standard library + numpy, so deployed artifacts never need the compiler. Weights are one
raw little-endian file (`weights.bin`) with 64-byte aligned tensors indexed in the manifest;
every file's sha256 is in the manifest and is checked before anything is loaded.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import glob
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ArtifactError

SCHEMA = "honer.artifact/1"
MANIFEST = "manifest.json"
WEIGHTS = "weights.bin"
ALIGN = 64
WEIGHT_DTYPES = frozenset({"float16", "float32", "float64", "int8", "int16", "int32", "int64",
                           "uint8", "bool"})


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_weights(path: Path, tensors: Iterable[tuple[str, np.ndarray]]) -> list[dict[str, Any]]:
    """Writes tensors back to back (64-byte aligned); returns their index for the manifest."""
    index = []
    with open(path, "wb") as f:
        for name, array in tensors:
            pad = (-f.tell()) % ALIGN
            f.write(b"\0" * pad)
            data = np.ascontiguousarray(array)
            if data.dtype.byteorder == ">":
                data = data.astype(data.dtype.newbyteorder("<"))
            index.append({"name": name, "dtype": str(data.dtype), "shape": list(data.shape),
                          "offset": f.tell(), "nbytes": int(data.nbytes)})
            f.write(memoryview(data).cast("B"))  # no temporary copy of big tensors
    return index


def read_weights(path: Path, index: list[dict[str, Any]]) -> list[np.ndarray]:
    """Maps the weight file copy-on-write: arrays are views of the page cache (nothing is
    copied, and processes loading the same artifact share the pages); writable views, because
    DLPack cannot hand read-only memory to a runtime, but writes never reach the file."""
    size = path.stat().st_size
    if size == 0:
        return [np.zeros(t["shape"], dtype=t["dtype"]) for t in index]
    mm = np.memmap(path, dtype=np.uint8, mode="c")
    out = []
    for t in index:
        if t["dtype"] not in WEIGHT_DTYPES:  # never "object": that would read pointers
            raise ArtifactError(f"weight '{t['name']}' has dtype {t['dtype']!r}; artifacts "
                                f"hold {sorted(WEIGHT_DTYPES)}")
        dtype = np.dtype(t["dtype"])
        count = int(np.prod(t["shape"], dtype=np.int64))
        if t["offset"] + count * dtype.itemsize > size or count * dtype.itemsize != t["nbytes"]:
            raise ArtifactError(f"weight '{t['name']}' lies outside {path.name} (truncated?)")
        raw = mm[t["offset"]: t["offset"] + t["nbytes"]]
        out.append(raw.view(dtype).reshape(t["shape"]))
    return out


def write_artifact(dest: Path, fill: Callable[[Path], dict[str, Any]]) -> Path:
    """Creates an artifact atomically: `fill(tmpdir)` writes files and returns the manifest
    body; hashes are added here, then the directory is renamed into place."""
    dest = Path(dest).absolute()
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=_scratch_prefix(dest, "tmp"), dir=dest.parent))
    try:
        manifest = fill(tmp)
        manifest = {"schema": SCHEMA, **manifest}
        manifest["files"] = {
            rel: sha256_file(tmp / rel) for rel in sorted(_relative_files(tmp))
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
        _fsync_tree(tmp)
        _swap_into_place(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


def copy_artifact(src: Path, dest: Path) -> Path:
    """Copies an artifact directory atomically (used by CompiledModel.save)."""
    def fill(tmp: Path) -> dict[str, Any]:
        manifest = read_manifest(src)
        for rel in manifest["files"]:
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src / rel, tmp / rel)  # keeps modes: the C simulation is an executable
        return {k: v for k, v in manifest.items() if k not in ("files", "schema")}

    return write_artifact(dest, fill)


def _relative_files(root: Path) -> list[str]:
    return [p.relative_to(root).as_posix() for p in root.rglob("*")
            if p.is_file() and p.name != MANIFEST]


def _fsync_tree(root: Path) -> None:
    for p in root.rglob("*"):
        if p.is_file():
            with open(p, "rb") as f:
                os.fsync(f.fileno())


def _scratch_prefix(dest: Path, kind: str) -> str:
    # the writer's pid in the name lets a later writer remove what a killed one left behind
    return f".{dest.name}.{kind}-{os.getpid()}-"


def _swap_into_place(tmp: Path, dest: Path) -> None:
    """Puts `tmp` at `dest`. Writers of one destination take turns (a lock file beside it);
    an existing artifact is exchanged atomically, so readers always see a whole artifact."""
    with file_lock(dest.parent / f".{dest.name}.lock"):
        _remove_abandoned(dest)
        if not (dest.exists() or dest.is_symlink()):
            os.rename(tmp, dest)
            return
        if not (dest / MANIFEST).exists() and dest.is_dir() and any(dest.iterdir()):
            raise ArtifactError(f"{dest} exists and is not a honer artifact; not replacing it")
        if _exchange(tmp, dest):  # tmp now holds the previous artifact
            shutil.rmtree(tmp, ignore_errors=True)
            return
        # no atomic exchange here: a crash between the renames leaves no artifact at dest
        # (never a partial one); the old one is then removed by the next writer
        old = Path(tempfile.mkdtemp(prefix=_scratch_prefix(dest, "old"), dir=dest.parent))
        os.rename(dest, old / "a")
        os.rename(tmp, dest)
        shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def file_lock(lock_path: Path) -> Iterator[None]:
    """An exclusive lock between processes (flock on `lock_path`, created if missing); the
    kernel releases it when the holder exits, also when it is killed."""
    with open(lock_path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _remove_abandoned(dest: Path) -> None:
    """Scratch directories of writers that died (killed mid-compile)."""
    for kind in ("tmp", "old"):
        for p in dest.parent.glob(f".{glob.escape(dest.name)}.{kind}-*-*"):
            pid = p.name[len(f".{dest.name}.{kind}-"):].split("-", 1)[0]
            if pid.isdigit() and not _alive(int(pid)):
                shutil.rmtree(p, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0 only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, and someone else's
        pass
    return True


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Linux renameat2(RENAME_EXCHANGE): swaps two paths atomically. False where unsupported."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p,
                          ctypes.c_uint]
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
        return False
    raise OSError(err, f"exchanging {a} and {b}: {os.strerror(err)}")


def read_manifest(path: Path) -> dict[str, Any]:
    """Reads and validates manifest.json and every file hash; raises ArtifactError saying why."""
    path = Path(path)
    if not path.is_dir():
        raise ArtifactError(f"{path} is not an artifact directory")
    mfile = path / MANIFEST
    if not mfile.is_file():
        raise ArtifactError(f"{path} has no {MANIFEST}")
    try:
        manifest = json.loads(mfile.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ArtifactError(f"{mfile} is not valid JSON: {e}") from None
    if not isinstance(manifest, dict) or manifest.get("schema") != SCHEMA:
        got = manifest.get("schema") if isinstance(manifest, dict) else None
        raise ArtifactError(f"{path}: unknown artifact schema {got!r} (this runtime reads "
                            f"{SCHEMA})")
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        raise ArtifactError(f"{path}: manifest lists no files")
    root = path.resolve()
    for rel, digest in files.items():
        target = (path / rel).resolve()
        if not isinstance(rel, str) or root not in target.parents:
            raise ArtifactError(f"{path}: manifest names a path outside the artifact: {rel!r}")
        if not target.is_file():
            raise ArtifactError(f"{path}: file {rel} is missing")
        if sha256_file(target) != digest:
            raise ArtifactError(f"{path}: file {rel} does not match its sha256 in the manifest "
                                "(corrupted or tampered with)")
    return manifest
