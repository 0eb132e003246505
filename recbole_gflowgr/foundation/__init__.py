"""Layer 0, imported by every other layer and importing none: errors, paths, file utilities, compatibility shims,
the config schema (``validation``). See docs/architecture.md."""
