"""The analyzer: replay each spike from its snapshots, measure, apply one rule per mechanism."""
