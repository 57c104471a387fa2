"""Host-side servers the harness runs beside QEMU to shape what a guest is shown."""
