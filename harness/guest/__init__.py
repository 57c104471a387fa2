"""A running guest, whoever started it: the ``Guest`` protocol, the boot wait, the SSH
client, what the guest init's console says and how QEMU ended."""
