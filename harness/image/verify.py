"""What a cached image must hold, recorded when it is built and checked on every use.

A cached image is trusted only as far as it can be checked: a zero-length or
truncated vmlinux, a cut initramfs or a corrupt ``manifest.json`` (a crash, a full
disk, a hand edit) would otherwise make every later run exit 2 until someone deleted
the directory.  The build records each file's size, sha256 and mtime in the
manifest; each use compares the sizes, hashes a file again only when its mtime
moved (hashing the 66 MB vmlinux costs 0.2 s, too much for every boot), and checks
the structure that a cut leaves broken: a vmlinux ends where its ELF headers say,
an initramfs ends with the cpio trailer.  Images built before sizes were recorded
get the structure checks alone.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from ..errors import ImageBuildError
from .elf import file_extent

# What a complete image directory holds, and the files whose size and sha256 the
# build records: what the guest boots.  The keys are only checked to be there and
# not empty (a wrong host key is refused at the SSH connection, by name).
REQUIRED = ("vmlinux", "vmlinuz", "initrd.cpio", "host_key.pub", "client_key")
RECORDED = ("vmlinux", "vmlinuz", "initrd.cpio")
# Keys a manifest must carry as strings.
_MANIFEST_KEYS = ("recipe", "key", "kernel_release")
_HEAD = 1 << 16
_TRAILER = b"TRAILER!!!"


def sha256_file(path: Path) -> str:
    """The sha256 of a file, read in blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def record_files(directory: Path) -> dict[str, dict[str, Any]]:
    """Size, sha256 and mtime (ns) of every image file, for the manifest."""
    files = {}
    for name in RECORDED:
        path = directory / name
        info = path.stat()
        files[name] = {"size": info.st_size, "sha256": sha256_file(path),
                       "mtime_ns": info.st_mtime_ns}
    return files


def record_files_at(root: Path, names: Iterable[Path]) -> dict[str, dict[str, Any]]:
    """Size, sha256 and mtime (ns) of each file below ``root``, keyed by its relative
    path (a QEMU build's manifest, checked on use with ``file_problem``)."""
    files = {}
    for name in names:
        path = root / name
        info = path.stat()
        files[str(name)] = {"size": info.st_size, "sha256": sha256_file(path),
                            "mtime_ns": info.st_mtime_ns}
    return files


def manifest_problem(manifest: object) -> str | None:
    """Why a parsed ``manifest.json`` cannot describe an image, or None."""
    if not isinstance(manifest, dict):
        return f"manifest.json holds a {type(manifest).__name__}, not an object"
    for key in _MANIFEST_KEYS:
        if not isinstance(manifest.get(key), str):
            return f"manifest.json has no {key!r}"
    files = manifest.get("files", {})
    if not isinstance(files, dict) or not all(isinstance(v, dict) for v in files.values()):
        return "manifest.json's 'files' is not a table of files"
    return None


def _structure_problem(path: Path, size: int) -> str | None:
    with open(path, "rb") as handle:
        if path.name == "vmlinux":
            try:
                extent = file_extent(handle.read(_HEAD), path.name)
            except ImageBuildError as exc:
                return exc.message
            if extent > size:
                return f"vmlinux is cut short: {size} bytes, its ELF headers say {extent}"
        elif path.name == "initrd.cpio":
            handle.seek(max(0, size - 1024))
            if not handle.read().rstrip(b"\0").endswith(_TRAILER):
                return "initrd.cpio is cut short: it does not end with the cpio trailer"
    return None


def file_problem(path: Path, recorded: Mapping[str, Any] | None) -> str | None:
    """Why one image file cannot be used, or None.  ``recorded``: what the build
    wrote down for it (None for an image built before that)."""
    name = path.name
    try:
        info = os.stat(path)
        if not stat.S_ISREG(info.st_mode):
            return f"{name} is not a regular file"
        if info.st_size == 0:
            return f"{name} is empty"
        if recorded is not None:
            if info.st_size != recorded.get("size"):
                return f"{name} is {info.st_size} bytes, {recorded.get('size')} when built"
            if info.st_mtime_ns != recorded.get("mtime_ns") \
                    and sha256_file(path) != recorded.get("sha256"):
                return f"{name} changed since the build (another sha256)"
        return _structure_problem(path, info.st_size)
    except FileNotFoundError:
        return f"{name} is missing"
    except OSError as exc:
        return f"{name} cannot be read: {exc.strerror}"


def image_problem(directory: Path, manifest: object) -> str | None:
    """Why the image in ``directory`` (described by ``manifest``) cannot be used, or
    None when every check holds."""
    problem = manifest_problem(manifest)
    if problem is not None:
        return problem
    assert isinstance(manifest, dict)
    files = manifest.get("files", {})
    for name in REQUIRED:
        problem = file_problem(directory / name, files.get(name))
        if problem is not None:
            return problem
    return None
