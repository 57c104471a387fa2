"""The host side of an export: the shape of its tree (pure), the private mount
namespace, building and recording the export, and the pure host truth the verdicts
compare against."""
