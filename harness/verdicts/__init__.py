"""Verdicts: pure rules from host truth, guest observations and QEMU's stderr to a
status with its failures.  ``common`` is the vocabulary every family shares; nothing
here mounts, spawns or talks to a guest (the structure test enforces it)."""
