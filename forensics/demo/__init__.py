"""Sample-run trainers: one seeded, deterministic trainer per mechanism, plus clean controls."""
