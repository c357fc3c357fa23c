"""spike forensics: a flight recorder and investigator for loss spikes in PyTorch training.

The public surface is small and imported lazily, so the training hot path pulls in
nothing it does not need:

    Recorder   record.recorder  - rides in the training loop, keeps the black box
    open_run   rundir.reader    - reads a run directory (manifest, steps, spikes, snapshots)
    analyze    analyzer.pipeline - attributes each spike to its mechanism, with evidence
    connect    catalog.views    - DuckDB views over one or many runs
    whatif     whatif.api       - replays a spike with a change (counterfactual), after a self-check
"""

__version__ = "0.1.0"

_LAZY = {
    "Recorder": ("forensics.record.recorder", "Recorder"),
    "RecorderConfig": ("forensics.record.config", "RecorderConfig"),
    "RecorderWarning": ("forensics.record.warn", "RecorderWarning"),
    "RunFormatError": ("forensics.rundir.format", "RunFormatError"),
    "DetectorConfig": ("forensics.record.detector", "DetectorConfig"),
    "open_run": ("forensics.rundir.reader", "open_run"),
    "analyze": ("forensics.analyzer.pipeline", "analyze"),
    "connect": ("forensics.catalog.views", "connect"),
    "whatif": ("forensics.whatif.api", "whatif"),
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'forensics' has no attribute {name!r}")
    import importlib

    module, attr = _LAZY[name]
    return getattr(importlib.import_module(module), attr)


def __dir__():
    return sorted([*globals(), *_LAZY])
