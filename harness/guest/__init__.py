"""A running guest, whoever started it: the ``Guest`` protocol, the boot wait, the SSH
client and what the guest init's console says."""
