"""Known-answer tests of the everyday mechanisms (issue #16) on hand-built evidence:
optimizer_state_reset, hyperparameter_jump and short_batch, each judged through its spec's view
of a strict Evidence, and their place in the verdict."""

import math

import pytest

from forensics.analyzer.evidence import Evidence as _Evidence
from forensics.analyzer.evidence import SpikeContext
from forensics.analyzer.measure import METRICS
from forensics.analyzer.rules import SPECS
from forensics.analyzer.rules.hyperparameter_jump import factor
from forensics.analyzer.verdict import choose_verdict


def ctx(**kw):
    base = dict(run_id="r", spike_id=0, onset=501, peak=501, end=511, peak_loss=0.2,
                baseline_loss=0.01, optimizer="adam", betas=(0.9, 0.999))
    base.update(kw)
    return SpikeContext(**base)


def Evidence(context):  # noqa: N802  (strict evidence, as the pipeline builds it)
    return _Evidence(context, catalog=METRICS)


def judge(rule, ev):
    return SPECS[rule].run(ev)


def lrs(ev, steps, values):
    for s, v in zip(steps, values, strict=True):
        ev.add(s, "hyperparams", "lr_recorded", v)


# ------------------------------------------------------------------ optimizer_state_reset

def reset_evidence(jump=15.8, share=0.997, onset=501, reset=500):
    ev = Evidence(ctx(onset=onset, peak=onset))
    for s in range(reset - 5, onset + 3):
        ev.add(s, "optimizer_state", "step_counter", s if s < reset else s - reset)
    ev.add_many(reset, "optimizer_state", {"counter_before_reset": reset, "counter_after_reset": 1,
                                            "update_norm_jump": jump, "lr_sized_share": share,
                                            "v_one_gradient_share": 1.0, "moments_empty": 1.0})
    lrs(ev, range(reset - 5, onset + 3), [3e-3] * (onset + 8 - reset))
    return ev


def test_reset_fires_on_the_counter_going_back_and_names_the_step():
    f = judge("optimizer_state_reset", reset_evidence())
    assert f.status == "fired" and f.score == 1.0
    assert f.evidence["reset_step"] == 500 and f.evidence["seen_in"] == "counter"
    assert "500 → 1" in f.message and "×15.8" in f.message and "100% of coordinates" in f.message
    # the hint reads the run's lr and β₂ and never advises the lr it already uses
    assert "0.0003 back to 0.003" in f.hint and "β₂ = 0.999" in f.hint


def test_reset_with_an_ordinary_update_does_not_fire():
    f = judge("optimizer_state_reset", reset_evidence(jump=1.2, share=0.01))
    assert f.status == "not_fired" and "ordinary" in f.message


def test_reset_too_long_before_onset_does_not_fire():
    f = judge("optimizer_state_reset", reset_evidence(onset=540, reset=500))
    assert f.status == "not_fired"


def test_reset_seen_only_in_the_moments():
    ev = Evidence(ctx())
    ev.add(0, "optimizer_state", "run_start_counter", 0)
    ev.add_many(500, "optimizer_state", {"moments_empty": 1.0, "lr_sized_share": 0.99})
    assert judge("optimizer_state_reset", ev).status == "not_fired"  # never seen filled: not a reset
    ev.add(496, "optimizer_state", "moments_empty", 0.0)
    f = judge("optimizer_state_reset", ev)
    assert f.status == "fired" and f.evidence["seen_in"] == "moments" and f.evidence["reset_step"] == 500


def test_reset_is_adam_only():
    ev = reset_evidence()
    ev.context = ctx(optimizer="sgd", momentum=0.9)
    assert judge("optimizer_state_reset", ev).status == "not_fired"


@pytest.mark.parametrize("ratio, counter, status", [
    (3.5, 0, "fired"),         # trained weights, empty state: a resume without optimizer state
    (1.02, 0, "not_fired"),    # a fresh run from random init
    (3.5, 500, "not_fired"),   # a resume that restored the optimizer (counter 500)
    (None, 0, "inconclusive"),  # the first weights were not captured
])
def test_run_start_with_trained_weights_and_empty_state(ratio, counter, status):
    ev = Evidence(ctx(onset=1, peak=1, end=12))
    ev.add(0, "optimizer_state", "run_start_counter", counter)
    if ratio is not None:
        ev.add_many(0, "optimizer_state", {"init_spectral_ratio": ratio, "init_norm_ratio": 1.2})
    lrs(ev, range(0, 12), [3e-3] * 12)
    f = judge("optimizer_state_reset", ev)
    assert f.status == status, f.message
    if status == "fired":
        assert "trained weights" in f.message and "load the optimizer state" in f.hint
        assert f.message.startswith("optimizer state reset at step 0, the run's start")


def test_run_start_far_before_onset_does_not_fire():
    ev = Evidence(ctx(onset=200, peak=200))
    ev.add(0, "optimizer_state", "run_start_counter", 0)
    ev.add(0, "optimizer_state", "init_spectral_ratio", 3.5)
    assert judge("optimizer_state_reset", ev).status == "not_fired"


# ------------------------------------------------------------------ hyperparameter_jump

@pytest.mark.parametrize("name, old, new, expected", [
    ("lr", 0.004, 0.1, 25.0), ("lr", 0.1, 0.004, None), ("lr", 0.0, 1e-3, None),
    ("eps", 1e-8, 1e-10, 100.0), ("eps", 1e-8, 1e-6, None),
    ("beta2", 0.999, 0.99, 10.0), ("beta2", 0.99, 0.999, 10.0), ("momentum", 0.0, 0.9, 10.0),
    ("weight_decay", 0.0, 0.1, math.inf), ("weight_decay", 0.1, 0.01, 10.0), ("lr", 0.1, 0.1, 1.0),
])
def test_factor_counts_what_raises_the_step_size(name, old, new, expected):
    got = factor(name, old, new)
    assert got == (None if expected is None else pytest.approx(expected))


def test_lr_jump_fires_with_old_and_new_value_and_step():
    ev = Evidence(ctx(onset=603, peak=609, end=612, optimizer="sgd", momentum=0.9))
    lrs(ev, range(560, 620), [0.004 + 1e-5 * (599 - s) if s < 600 else 0.1 for s in range(560, 620)])
    f = judge("hyperparameter_jump", ev)
    assert f.status == "fired"
    assert f.evidence["step"] == 600 and f.evidence["hparam"] == "lr"
    assert f.evidence["factor"] == pytest.approx(25, rel=0.01)
    assert "learning rate jumped ×25 at step 600 (0.004 → 0.1)" in f.message
    assert "at 0.004" in f.hint and "0.1" in f.hint  # the old value, not the one in force


def test_smooth_schedules_warmup_from_zero_and_decays_do_not_fire():
    ev = Evidence(ctx(onset=40, peak=41, end=45, optimizer="sgd"))
    warm = [0.0] + [0.1 * (s + 1) / 30 for s in range(1, 30)] + [0.1 * 0.5 ** (s // 5) for s in range(30, 50)]
    lrs(ev, range(0, 50), warm)
    f = judge("hyperparameter_jump", ev)
    assert f.status == "not_fired", f.message


def test_a_jump_after_onset_or_long_before_does_not_fire():
    for jump_at in (520, 300):
        ev = Evidence(ctx(onset=510, peak=512, optimizer="sgd"))
        lrs(ev, range(250, 530), [0.004 if s < jump_at else 0.1 for s in range(250, 530)])
        assert judge("hyperparameter_jump", ev).status == "not_fired", jump_at


def test_beta2_change_of_another_group_seen_between_snapshots():
    ev = Evidence(ctx(onset=120, peak=121))
    lrs(ev, range(80, 125), [1e-3] * 45)
    for step, beta2 in ((90, 0.999), (100, 0.999), (116, 0.95), (119, 0.95)):
        ev.add(step, "hyperparams", "param_groups", 2)
        ev.add(step, "hyperparams", "hparam@beta2.g0", 0.999)
        ev.add(step, "hyperparams", "hparam@beta2.g1", beta2)
    f = judge("hyperparameter_jump", ev)
    assert f.status == "fired" and f.evidence["hparam"] == "beta2" and f.evidence["group"] == 1
    assert "between steps 100 and 116" in f.message and f.evidence["factor"] == pytest.approx(50)


@pytest.mark.parametrize("scheduled, source", [(1.0, "(schedule, 0.004 → 0.1)"),
                                               (0.0, "(set directly, 0.004 → 0.1)"),
                                               (None, "(0.004 → 0.1)")])
def test_lr_jump_names_its_source_when_a_scheduler_drives_the_group(scheduled, source):
    ev = Evidence(ctx(onset=603, peak=609, end=612, optimizer="sgd"))
    lrs(ev, range(590, 610), [0.004 if s < 600 else 0.1 for s in range(590, 610)])
    if scheduled is not None:
        ev.add(603, "hyperparams", "lr_scheduled@g0", scheduled)
    f = judge("hyperparameter_jump", ev)
    assert f.status == "fired" and f"learning rate jumped ×25 at step 600 {source}" in f.message, f.message
    assert f.evidence["source"] == {1.0: "schedule", 0.0: "set directly", None: None}[scheduled]


def test_no_hyperparameters_recorded_is_inconclusive():
    assert judge("hyperparameter_jump", Evidence(ctx())).status == "inconclusive"


# ------------------------------------------------------------------ short_batch

def batches(onset, sizes):
    ev = Evidence(ctx(onset=onset, peak=onset, optimizer="sgd"))
    for s, n in sizes.items():
        ev.add(s, "batches", "batch_rows", n)
    ev.add(onset, "batches", "batch_rows_usual", 32)
    return ev


def test_short_batch_fires_with_size_usual_and_period():
    sizes = {s: 32 for s in range(0, 80)} | {12: 3, 25: 3, 38: 3, 51: 3, 64: 3}
    f = judge("short_batch", batches(51, sizes))
    assert f.status == "fired" and f.score == 1.0
    assert f.evidence["batch_rows"] == 3 and f.evidence["usual"] == 32 and f.evidence["period"] == 13
    assert "3 samples against the usual 32, recurring every 13 steps" in f.message
    assert "drop_last=True" in f.hint and "3 samples" in f.hint


def test_short_batch_just_before_onset_counts_and_a_lone_one_has_no_period():
    sizes = {s: 32 for s in range(40, 60)} | {50: 3}
    f = judge("short_batch", batches(51, sizes))
    assert f.status == "fired" and f.evidence["step"] == 50 and f.evidence["period"] is None


def test_full_batch_at_onset_does_not_fire():
    sizes = {s: 32 for s in range(40, 60)} | {45: 3}
    f = judge("short_batch", batches(51, sizes))
    assert f.status == "not_fired" and "32" in f.message


def test_short_batch_without_batch_sizes_is_inconclusive():
    ev = Evidence(ctx(optimizer="sgd"))
    ev.skip("batches", "the onset step 501 was not captured")
    f = judge("short_batch", ev)
    assert f.status == "inconclusive" and "not captured" in f.reason


# ------------------------------------------------------------------ precedence

def test_short_batch_outranks_data_and_a_jump_outranks_curvature():
    assert SPECS["short_batch"].precedence < SPECS["data"].precedence
    for curvature in ("sharpness", "catapult", "adam_beta2_lag"):
        assert SPECS["hyperparameter_jump"].precedence < SPECS[curvature].precedence
        assert SPECS["optimizer_state_reset"].precedence < SPECS[curvature].precedence
    sizes = {s: 32 for s in range(40, 60)} | {51: 3}
    ev = batches(51, sizes)
    ev.add(51, "data", "batch_loss_ratio", 10.0)
    findings = [SPECS[name].run(ev) for name in ("data", "short_batch")]
    assert choose_verdict(findings, ev)[0] == "short_batch"


def test_reset_hint_never_advises_the_ramp_the_run_already_does():
    ev = reset_evidence()
    f = judge("optimizer_state_reset", ev)
    assert "0.0003 back to 0.003" in f.hint
    ramped = Evidence(ctx())
    for row in reset_evidence().rows:
        if row[2] != "lr_recorded":
            ramped.add(*row)
    lrs(ramped, range(495, 504), [3e-3] * 5 + [3e-5 * (1 + s) for s in range(4)])  # a warmup restarts at 500
    f = judge("optimizer_state_reset", ramped)
    assert "already restarts at 3e-05" in f.hint and "back to" not in f.hint


class _Steps:
    """A run whose steps/ holds the given columns (what the steps-only engines read)."""

    def __init__(self, **columns):
        import pyarrow as pa

        self.steps = pa.table(columns)


@pytest.mark.parametrize("counter, reset", [
    ([498, 499, 500, 1, 2, 3], 500),  # the empty state's counter written as the recorder's own count
    ([498, 499, 0, 1, 2, 3], 500),    # ... or as 0: the same reset step, the same "500 → 1"
    ([498, 499, 500, 301, 302, 303], None),  # an older state reloaded (a rollback): not a fresh state
    ([498, 499, 500, 501, 502, 503], None),  # nothing happened
])
def test_the_reset_step_is_found_from_the_counter_whatever_the_empty_state_reads(counter, reset):
    from forensics.analyzer.measure import optimizer_state

    run = _Steps(step=list(range(498, 504)), optimizer_step=counter,
                 update_norm=[0.04, 0.05, 0.8, 0.5, 0.4, 0.3])
    ev = Evidence(ctx())
    found = optimizer_state._from_steps(ev, run, 400, 520)
    assert found == ([] if reset is None else [reset])
    if reset is not None:
        assert ev.at("counter_before_reset", reset) == 500 and ev.at("counter_after_reset", reset) == 1
        assert ev.at("update_norm_jump", reset) == pytest.approx(0.8 / 0.045)


# ------------------------------------------------------------------ numerical: float16 overflow

def fp16_evidence(scale):
    ev = Evidence(ctx(onset=170, peak=234, end=270, nonfinite=True))
    for s in range(160, 200):
        ev.add(s, "numerical", "amp_skipped", float(s in (174, 176)))
        ev.add(s, "numerical", "loss_scale", scale if s <= 174 else scale / 2)
    ev.add(174, "numerical", "nonfinite_loss", 1.0)
    ev.add(174, "numerical", "nonfinite_grad", 12)
    ev.add(0, "numerical", "nonfinite_grad_skipped", 99)  # a calibration skip: not the origin
    ev.add_many(170, "numerical", {"amp_calibration_skips": 16, "amp_first_ok": 16})
    ev.add(173, "numerical", "fp16_max_output", 6.4e4)
    ev.add_many(174, "numerical", {"fp16_max_output": 6.64e4, "fp16_overflow@4": 6.64e4,
                                   "fp16_overflow_modules": 1, "fp16_output_layer": 1.0})
    return ev


@pytest.mark.parametrize("scale, floor_words", [(2.0**-8, "at or below its floor 1"),
                                                (2.0**12, "above its floor 1")])
def test_float16_overflow_names_module_step_margin_and_scale(scale, floor_words):
    f = judge("numerical", fp16_evidence(scale))
    assert f.status == "fired" and f.evidence["first_step"] == 174
    fp16 = f.evidence["fp16_overflow"]
    assert (fp16["module"], fp16["step"], fp16["output_layer"]) == ("4", 174, True)
    assert fp16["scale_at_floor"] == (scale <= 1) and fp16["loss_scale"] == scale
    assert f.message.startswith("float16 overflow in the activations of module `4` "
                                "(the model's output layer)")
    assert "6.64e+04 > 65504" in f.message and "step 173" in f.message and floor_words in f.message
    assert "16 calibration skip(s) (steps up to 15)" in f.message


def test_nonfinite_gradients_of_ordinary_scaler_skips_alone_do_not_fire():
    ev = Evidence(ctx(onset=170, peak=171, end=175))
    ev.add(0, "numerical", "nonfinite_grad_skipped", 99)
    ev.add(171, "numerical", "nonfinite_grad", 0)
    ev.add(171, "numerical", "nonfinite_loss", 0.0)
    assert judge("numerical", ev).status == "not_fired"
