"""The Hugging Face callback records a real Trainer run of a tiny GPT-2 (built from a config, no download)."""

import json
import math
import warnings

import pytest
import torch

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")

from forensics import Recorder, open_run  # noqa: E402
from forensics.integrations.huggingface import (  # noqa: E402
    SpikeForensicsTrainerCallback, causal_lm_loss, model_from_config,
)
from forensics.losses import resolve_loss  # noqa: E402
from forensics.rundir.model import build_model  # noqa: E402

V, T, BS = 50, 16, 8
# a short window: the loss of this tiny LM still falls fast when the spike is planted
REC = dict(ring_size=3, tail=2, baseline_every=1000,
           detector={"preset": "robust", "window": 8, "min_history": 8})


def _model(seed=0):
    torch.manual_seed(seed)
    cfg = transformers.GPT2Config(n_layer=1, n_head=2, n_embd=16, vocab_size=V, n_positions=T,
                                  resid_pdrop=0.0,
                                  embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0)
    return transformers.GPT2LMHeadModel(cfg)


class Counting(torch.utils.data.Dataset):
    """Sequences that count up mod V from a random start: next token = previous + 1."""

    def __init__(self, n, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.starts = torch.randint(0, V, (n,), generator=g)

    def __len__(self):
        return len(self.starts)

    def __getitem__(self, i):
        ids = (self.starts[i] + torch.arange(T)) % V
        return {"input_ids": ids, "labels": ids.clone(), "attention_mask": torch.ones(T, dtype=torch.long)}


class PoisonCollator:
    """Stacks examples; the micro-batches with the given call indices get random tokens (a planted spike)."""

    def __init__(self, poison):
        self.poison, self.calls = set(poison), 0

    def __call__(self, examples):
        batch = {k: torch.stack([e[k] for e in examples]) for k in examples[0]}
        if self.calls in self.poison:
            g = torch.Generator().manual_seed(self.calls)
            batch["input_ids"] = torch.randint(0, V, batch["input_ids"].shape, generator=g)
            batch["labels"] = batch["input_ids"].clone()
        self.calls += 1
        return batch


def _train(tmp_path, run_dir, steps, poison, accumulate=1, max_grad_norm=1.0):
    model = _model()
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path / "out"), per_device_train_batch_size=BS,
        gradient_accumulation_steps=accumulate,
        max_steps=steps, learning_rate=1e-2, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0,
        max_grad_norm=max_grad_norm, logging_strategy="no", save_strategy="no", report_to=[], use_cpu=True,
        dataloader_num_workers=0, disable_tqdm=True, seed=0)
    cb = SpikeForensicsTrainerCallback(run_dir, **REC)
    trainer = transformers.Trainer(model=model, args=args, train_dataset=Counting(steps * accumulate * BS),
                                   data_collator=PoisonCollator(poison), callbacks=[cb])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.train()
    return trainer


def _replay_grad(run, snap):
    """Loss and gradient of the recorded batch at the recorded weights, on the model rebuilt from run.json
    (without allow_import: the Hugging Face rebuild is a trusted factory)."""
    model = build_model(run.manifest)
    names = [p["name"] for p in run.manifest["params"]]
    with torch.no_grad():
        params = dict(model.named_parameters())
        for n in names:
            params[n].copy_(snap.params[n])
    model.train()
    loss_fn = resolve_loss(run.manifest["loss"])
    loss = loss_fn(model(snap.batch["input_ids"]), snap.batch["labels"])
    grads = torch.autograd.grad(loss, [params[n] for n in names])
    return float(loss), dict(zip(names, grads, strict=True)), names


def _adam_next(snap, names):
    """θ_{t+1} by hand (AdamW, weight decay 0): the update the optimizer made with the recorded grad."""
    lr, (b1, b2), eps = float(snap.meta["lr"]), snap.meta["betas"], float(snap.meta["eps"])
    k = int(snap.meta["optimizer_step"]) + 1
    out = {}
    for n in names:
        g, m, v = snap.grads[n], snap.exp_avg[n], snap.exp_avg_sq[n]
        m, v = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g * g
        out[n] = snap.params[n] - lr * (m / (1 - b1 ** k)) / ((v / (1 - b2 ** k)).sqrt() + eps)
    return out


def _check_grads(run, onset, max_norm):
    snap, nxt = run.snapshot(onset).load(), run.snapshot(onset + 1).load()
    loss, g, names = _replay_grad(run, snap)
    assert float(snap.meta["loss"]) == pytest.approx(loss, rel=1e-4)
    norm = math.sqrt(sum(float(x.square().sum()) for x in g.values()))
    scale = min(1.0, max_norm / (norm + 1e-6))
    assert snap.meta["grad_clipped"] == (scale < 1)
    for n in names:  # the gradient of the recorded batch, clipped like the Trainer ...
        torch.testing.assert_close(snap.grads[n], g[n] * scale, rtol=2e-4, atol=1e-6)
    for n, th in _adam_next(snap, names).items():  # ... is the one the update used
        torch.testing.assert_close(nxt.params[n], th, rtol=1e-4, atol=1e-6)
    return snap


def test_hf_trainer_run_is_recorded_and_analyzed(tmp_path):
    onset, steps = 40, 46
    _train(tmp_path, tmp_path / "hf", steps=steps, poison={onset})
    run = open_run(tmp_path / "hf")
    m = run.manifest
    assert m["hf_config"] == "hf_config.json" and (tmp_path / "hf" / "hf_config.json").is_file()
    assert m["model"]["factory"] == "forensics.integrations.huggingface:model_from_config"
    assert m["model"]["kwargs"]["architecture"] == "GPT2LMHeadModel"
    # transformers 5 counts GPT-2's unshifted labels in num_items_in_batch: the recorded loss says so
    assert m["loss"] in ("forensics.integrations.huggingface:causal_lm_loss",
                         "forensics.integrations.huggingface:causal_lm_loss_label_count")
    assert m["batch_keys"] == {"input": "input_ids", "target": "labels"}
    assert m["tied"] == {"lm_head.weight": "transformer.wte.weight"}
    plain = tmp_path / "plain"  # a plain-loop recording, for the shape of run.json
    tiny = torch.nn.Linear(2, 1)
    Recorder(tiny, torch.optim.Adam(tiny.parameters()), plain).close()
    assert set(m) == set(open_run(plain).manifest)
    assert run.steps.column("step").to_pylist() == list(range(steps))
    assert ({"loss", "lr", "grad_norm", "update_norm", "adam_ratio_median", "spike_id"}
            <= set(run.steps.column_names))

    assert [s.onset for s in run.spikes] == [onset]
    snap = _check_grads(run, onset, max_norm=1.0)
    assert snap.meta["role"] == "onset"
    assert set(snap.batch) == {"input_ids", "labels", "attention_mask"}
    assert snap.batch["input_ids"].shape == (BS, T)
    assert set(snap.exp_avg) == set(snap.exp_avg_sq) == set(snap.params)

    from forensics.analyzer.pipeline import Settings, analyze

    result = analyze(tmp_path / "hf", allow_import=True, mechanisms=["numerical", "sharpness", "data"],
                     settings=Settings(max_snapshots=4))
    assert [s.context.onset for s in result.spikes] == [onset]
    findings = {f.rule: f for f in result.spikes[0].findings}
    assert set(findings) == {"numerical", "sharpness", "data"}
    assert not any("model not rebuilt" in n for n in result.notes)
    ev = result.spikes[0].evidence
    assert "curvature" not in ev.skipped and any(e == "curvature" for _, e, _, _ in ev.rows)  # Lanczos ran
    assert findings["data"].status == "fired" and result.spikes[0].verdict == "data"  # a poisoned batch


def test_hf_gradient_accumulation_records_the_whole_step(tmp_path):
    onset = 30  # micro-batches 60 and 61
    _train(tmp_path, tmp_path / "acc", steps=34, poison={2 * onset, 2 * onset + 1}, accumulate=2,
           max_grad_norm=0.5)
    run = open_run(tmp_path / "acc")
    assert run.steps.num_rows == 34
    assert [s.onset for s in run.spikes] == [onset]
    snap = _check_grads(run, onset, max_norm=0.5)
    assert snap.batch["input_ids"].shape == (2 * BS, T)


def test_model_from_config_rebuilds_without_download():
    model = _model()
    cfg = json.loads(model.config.to_json_string(use_diff=False))
    rebuilt = model_from_config(cfg, "GPT2LMHeadModel")
    assert [n for n, _ in rebuilt.named_parameters()] == [n for n, _ in model.named_parameters()]
    ids = torch.randint(0, V, (2, T))
    rebuilt.load_state_dict(model.state_dict())
    model.eval(), rebuilt.eval()
    torch.testing.assert_close(rebuilt(ids), model(input_ids=ids).logits, rtol=1e-5, atol=1e-5)
    out = model(input_ids=ids, labels=ids)
    torch.testing.assert_close(causal_lm_loss(out.logits, ids), out.loss)
    with pytest.raises(ValueError):
        model_from_config(cfg, "os")


def test_only_world_process_zero_records(tmp_path):
    cb = SpikeForensicsTrainerCallback(tmp_path / "rank1")
    model = _model()
    state = transformers.TrainerState(is_world_process_zero=False)
    cb.on_train_begin(None, state, None, model=model, optimizer=torch.optim.Adam(model.parameters()))
    assert cb.recorder is None and not (tmp_path / "rank1").exists()


def test_integrations_package_imports_no_framework():
    import subprocess
    import sys

    code = ("import sys, forensics.integrations; "
            "assert not {'lightning', 'transformers'} & set(sys.modules), sorted(sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_run_json_is_written_once_by_the_recorder_with_config_and_loss(tmp_path, monkeypatch):
    """The adapter passes hf_config and loss into the Recorder instead of editing its manifest and
    rewriting run.json: the one write of run.json already names the config file and the loss."""
    from forensics.rundir import atomic

    writes, real = [], atomic.write_bytes

    def spy(final, data, **kw):
        if str(final).endswith("run.json"):
            writes.append(json.loads(data))
        return real(final, data, **kw)

    monkeypatch.setattr(atomic, "write_bytes", spy)
    model = _model()
    cb = SpikeForensicsTrainerCallback(tmp_path / "hf", **REC)
    state = transformers.TrainerState()
    cb.on_train_begin(None, state, None, model=model, optimizer=torch.optim.AdamW(model.parameters()))
    cb._close()
    assert len(writes) == 1
    assert writes[0]["hf_config"] == "hf_config.json"
    assert writes[0]["loss"] in ("forensics.integrations.huggingface:causal_lm_loss",
                                 "forensics.integrations.huggingface:causal_lm_loss_label_count")
    assert json.loads((tmp_path / "hf" / "hf_config.json").read_text())["n_embd"] == 16
    assert open_run(tmp_path / "hf").manifest["hf_config"] == "hf_config.json"


def test_recorder_set_loss_rewrites_run_json(tmp_path):
    """The adapter's one late change (the loss's normalisation, known at the first step) goes through
    the Recorder, which owns run.json; a loss that is no spec is refused and nothing changes."""
    tiny = torch.nn.Linear(2, 1)
    rec = Recorder(tiny, torch.optim.Adam(tiny.parameters()), tmp_path / "r", loss="mse")
    rec.set_loss(causal_lm_loss)
    assert rec.loss_spec == "forensics.integrations.huggingface:causal_lm_loss"
    assert open_run(tmp_path / "r").manifest["loss"] == rec.loss_spec
    with pytest.raises(ValueError, match="loss must be"):
        rec.set_loss(3)
    rec.close()
    assert open_run(tmp_path / "r").manifest["loss"] == "forensics.integrations.huggingface:causal_lm_loss"
