"""Sample-run trainers: one seeded, deterministic trainer per mechanism, plus clean controls."""

from forensics.demo.registry import TRAINERS, make_all

__all__ = ["TRAINERS", "make_all"]
