"""How a Hugging Face `transformers` model is rebuilt by the analyzer, without importing transformers:
the factory `model_from_config` (forensics.integrations.huggingface) with the model's whole config
inline, so a run recorded in a plain loop is analyzable from its folder like one recorded by the
Trainer callback (no download, no `allow_import`)."""

from __future__ import annotations

import json

HF_FACTORY = "forensics.integrations.huggingface:model_from_config"


def hf_factory(model) -> tuple[str, dict] | None:
    """(factory, kwargs) that rebuild `model` from its config when it is a `transformers` model (its
    class lives in the transformers package and it has a `config` with `to_json_string`); None for
    any other model."""
    config = getattr(model, "config", None)
    if not type(model).__module__.startswith("transformers.") or not hasattr(config, "to_json_string"):
        return None
    return HF_FACTORY, {"config": json.loads(config.to_json_string(use_diff=False)),
                        "architecture": type(model).__name__}


__all__ = ["HF_FACTORY", "hf_factory"]
