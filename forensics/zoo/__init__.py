"""The model zoo: small models and tasks the sample runs are trained on (safe to rebuild)."""
