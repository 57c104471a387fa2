"""The work of each command beside the main job (``exec``, ``reproduce``, ``predict``,
``grid``, ``image``, ``qemu``) and the by-hand reproduction script; their options and
handlers are in ``cli/``."""
