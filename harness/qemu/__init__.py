"""QEMU itself: the machine's spec, the binary probe, the accelerator decision, the
command line (pure), QMP, the machine with its layered shutdown, saved states and
Debian's QEMU builds."""
