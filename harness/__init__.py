"""multidevs-harness: end-to-end checks of QEMU's 9p multidevs option on real guests."""

__version__ = "0.1.0"
