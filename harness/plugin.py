"""pytest plugin (fixtures and options); filled in by the main-job work."""
