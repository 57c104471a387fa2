"""Guests defined through a private libvirtd: its daemons, the domain XML, the guest,
and the libvirt backend of the run."""
