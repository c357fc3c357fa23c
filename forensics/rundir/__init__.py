"""The run directory: the on-disk contract (docs/format.md), its writers and its one reader."""
