"""What a built guest image is: the kernel, initramfs and keys of one recipe.

``image.build`` makes one; QEMU's and libvirt's machines boot it.  A module of its own,
so a machine can name the type without loading the build.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class GuestImage:
    """The built artefacts of one guest recipe, all inside one cache directory."""

    directory: Path
    recipe: str
    cache_key: str
    kernel_release: str
    vmlinux: Path
    vmlinuz: Path
    initrd: Path
    host_key_pub: Path
    client_key: Path
    client_key_pub: Path
    cache_hit: bool = False
    # Release of the modules in the initramfs; "" when the kernel needs none (9p and
    # virtio built in).  Differs from kernel_release only in a --modules variant.
    modules_release: str = ""
    # The recipe's virtiofs modules (fuse, virtiofs) neither in the kernel's tree nor
    # built in: such an image boots for 9p, and its virtiofs rows are errors naming them.
    missing_modules: tuple[str, ...] = ()
