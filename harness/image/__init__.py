"""The guest image: what a built one holds, recipes, packages from a private apt,
kernel files, the initramfs and its cpio writer."""
