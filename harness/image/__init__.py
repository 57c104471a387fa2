"""The guest image: recipes, packages from a private apt, kernel files, the
initramfs and its cpio writer."""
