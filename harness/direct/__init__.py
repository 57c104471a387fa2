"""QEMU run directly by the harness: the direct backend of the run (``--via qemu``),
beside ``libvirt`` (``--via libvirt``)."""
