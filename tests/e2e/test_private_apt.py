"""The private apt the image build uses, read back through the real apt-config."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from harness.image.apt import apt_options


@pytest.mark.timeout(60)
@pytest.mark.skipif(shutil.which("apt-config") is None, reason="needs apt-config (Debian host)")
def test_private_apt_keeps_its_binary_caches_whatever_the_host_says(tmp_path: Path) -> None:
    """Hosts made from container images set ``Dir::Cache::pkgcache ""`` in apt.conf.d
    (Docker's docker-clean), which made every apt-cache call of an image build parse
    the suite's whole package list again; the private apt names its caches itself.
    apt-config reads the host's apt.conf.d as apt-get does, then our options."""
    conf = tmp_path / "no-caches.conf"
    conf.write_text('Dir::Cache::pkgcache "";\nDir::Cache::srcpkgcache "";\n')
    dumped = subprocess.run(
        ["apt-config", "-c", str(conf), *apt_options(tmp_path / "state"), "dump"],
        capture_output=True, text=True, check=True, timeout=30).stdout
    assert 'Dir::Cache::pkgcache "pkgcache.bin";' in dumped
    assert 'Dir::Cache::srcpkgcache "srcpkgcache.bin";' in dumped
    assert f'Dir::Cache "{tmp_path / "state" / "cache"}";' in dumped
