"""The anchored sampler (Alg. 1) on a tiny real sDiT with random (non-zero) weights."""

import numpy as np
import pytest
import torch

from anchorface.methods.anchored.sampler import anchored_diffusion, frame_generators, initial_noise, micro_batches
from anchorface.config import DiffusionConfig
from anchorface.diffusion.gaussian import GaussianDiffusion
from anchorface.errors import AnchorfaceError
from anchorface.methods.anchored.sdit import SDiT, SDiTConfig
from anchorface.methods.anchored.plans import anchored_plan, make_plan

T, C, S, LDIM, GDIM = 4, 4, 8, 1434, 16
LATENT = (C, S, S)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = SDiT(SDiTConfig(input_size=S, in_channels=C, patch_size=2, hidden_size=32, depth=2, num_heads=2,
                        num_frames=T, global_dim=GDIM, landmark_dim=LDIM, mapping_blocks=1))
    with torch.no_grad():  # DiT's zero-initialised adaLN / final layer would make every output 0
        for blk in [*m.blocks, m.final_layer]:
            blk.adaLN_modulation[-1].weight.normal_(0, 0.05)
        m.final_layer.linear.weight.normal_(0, 0.05)
    return m.eval()


class _Wrapped(torch.nn.Module):
    """A test double around a real sDiT: the sampler sees the inner model's mapping network (conditional or not)."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    @property
    def mapping(self):
        return self.inner.mapping

    def condition(self, *args, **kwargs):
        return self.inner.condition(*args, **kwargs)


class EpsNearInput(_Wrapped):
    """Test double around the real sDiT: eps = x_t + 0.01 * sDiT(x_t)_eps (v from the sDiT). Like a trained
    model at large t it predicts eps ~ x_t, which keeps x0 = (x_t - sqrt(1 - abar) eps) / sqrt(abar) of order one
    (a random sDiT gives |x0| ~ 1 / sqrt(abar_999) ~ 170), so float32 results can be compared at 1e-5.
    The anchoring hook is passed through unchanged (x_t at the anchor is shared, so is the output)."""

    @property
    def config(self):  # learn_sigma: the sampler reads it to choose the scheduler's variance
        return self.inner.config

    def forward(self, x, t, *args, **kwargs):
        out = self.inner(x, t, *args, **kwargs)
        C = x.shape[2]
        return torch.cat([x + 0.01 * out[:, :, :C], out[:, :, C:]], dim=2)


class LowestLearnedVariance(_Wrapped):
    """Test double: a model without learned sigma (eps only) given a constant v = -1 channel block, i.e. a
    learned-sigma model whose variance sits at the low end of the learned range: the posterior variance, which is
    the fixed ("fixed_small") variance a model without learned sigma samples with."""

    def forward(self, x, t, *args, **kwargs):
        eps = self.inner(x, t, *args, **kwargs)
        return torch.cat([eps, -torch.ones_like(eps)], dim=2)


@pytest.fixture(scope="module")
def diffusion():
    return GaussianDiffusion(DiffusionConfig())


def conditions(n, seed=1):
    rng = np.random.default_rng(seed)
    return torch.from_numpy(rng.normal(size=GDIM).astype(np.float32)), rng.uniform(-1, 1, (n, LDIM)).astype(np.float32)


@pytest.fixture(scope="module")
def model_fixed_sigma():
    """The sDiT without learned sigma (learn_sigma=False: C output channels, eps only)."""
    torch.manual_seed(0)
    m = SDiT(SDiTConfig(input_size=S, in_channels=C, patch_size=2, hidden_size=32, depth=2, num_heads=2,
                        num_frames=T, global_dim=GDIM, landmark_dim=LDIM, mapping_blocks=1, learn_sigma=False))
    with torch.no_grad():
        for blk in [*m.blocks, m.final_layer]:
            blk.adaLN_modulation[-1].weight.normal_(0, 0.05)
        m.final_layer.linear.weight.normal_(0, 0.05)
    return m.eval()


def run(model, diffusion, plan, **kw):
    g, lmk = conditions(plan.num_frames)
    args = dict(sampler="ddpm", steps=3, micro_batch=2, seed=0, latent_shape=LATENT, progress=False)
    args.update(kw)
    return anchored_diffusion(model, diffusion, plan, g, lmk, **args)


@pytest.mark.parametrize("kind", ["anchored", "anchored-sorted"])
def test_anchor_tokens_shared_in_every_layer_at_every_step(model, diffusion, kind):
    # anchored: 5 sequences, anchor 5 in column 1 of each; anchored-sorted: 4 sequences, anchor at [3, 1, 0, 0]
    plan = make_plan(kind, 11, T)
    assert plan.num_sequences == {"anchored": 5, "anchored-sorted": 4}[kind]
    assert len(set(plan.anchor_positions.tolist())) == (1 if kind == "anchored" else 3)
    batches = micro_batches(plan.num_sequences, 3)  # rows [0, 1, 2] then the rest: in-batch override and replay
    calls, seen = [], []  # seen: (forward call, layer, anchor tokens of each row of that call)

    def pre_hook(layer):  # the input of block l+1 / the final layer = the (overridden) output of layer l
        def fn(module, args):
            rows = batches[(len(calls) - 1) % len(batches)]
            pos = torch.as_tensor(plan.anchor_positions[rows])
            seen.append((len(calls) - 1, layer, args[0][torch.arange(len(rows)), pos].clone()))
        return fn

    handles = [blk.register_forward_pre_hook(pre_hook(i)) for i, blk in enumerate(model.blocks)]
    handles.append(model.final_layer.register_forward_pre_hook(pre_hook(len(model.blocks))))
    handles.append(model.register_forward_pre_hook(lambda mod, args: calls.append(1)))
    events = []
    try:
        run(model, diffusion, plan, micro_batch=3, steps=3, callback=events.append)
    finally:
        for h in handles:
            h.remove()
    assert [e.step for e in events if e.kind == "step"] == [0, 1, 2]
    assert len(calls) == 3 * len(batches)
    for step in range(3):
        for layer in range(len(model.blocks) + 1):
            toks = torch.cat([tok for (c, l, tok) in seen if l == layer and c // len(batches) == step])
            assert len(toks) == plan.num_sequences
            assert all(torch.equal(tok, toks[0]) for tok in toks), f"anchor differs: step {step}, layer {layer}"
        # the gathered sequences share the anchor latent, and the model output at the anchor is overridden too
        batch_events = [e for e in events if e.kind == "batch" and e.step == step]
        lat = torch.cat([e.inputs[torch.arange(len(e.rows)), torch.as_tensor(plan.anchor_positions[e.rows])]
                         for e in batch_events])
        out = torch.cat([e.outputs[torch.arange(len(e.rows)), torch.as_tensor(plan.anchor_positions[e.rows])]
                         for e in batch_events])
        assert all(torch.equal(v, lat[0]) for v in lat) and all(torch.equal(v, out[0]) for v in out)
    first = [e for e in events if e.kind == "batch"][0].inputs[0, plan.anchor_positions[0]]
    assert not torch.equal(first, lat[0]), "the anchor latent is updated between steps"


def test_without_replay_the_anchor_would_differ(model, diffusion):
    """The check above can fail: sequences run apart, each with its own anchor, give different anchor tokens."""
    from anchorface.methods.anchored.sdit import AnchorOverride

    plan = anchored_plan(11, T)
    g, lmk = conditions(11)
    x = initial_noise(0, 11, LATENT)[torch.as_tensor(plan.slots)]
    outs = []
    with torch.no_grad():
        for b in range(plan.num_sequences):
            hook = AnchorOverride(positions=torch.as_tensor(plan.anchor_positions[b:b + 1]))
            model(x[b:b + 1], torch.tensor([500]), g[None], torch.from_numpy(lmk[plan.slots[b:b + 1]]), anchor=hook)
            outs.append(hook.recorded[-2])
    assert not torch.allclose(outs[0], outs[1], atol=1e-4)


@pytest.mark.parametrize("kind", ["anchored", "multidiffusion", "independent"])
@pytest.mark.parametrize("sampler,scale", [("ddpm", 1.0), ("ddim", 2.0), ("dpmpp-2m", 1.0), ("unipc", 2.0)])
def test_micro_batched_equals_single_batch(model, diffusion, kind, sampler, scale):
    model = EpsNearInput(model)
    plan = make_plan(kind, 13, T)
    ref = run(model, diffusion, plan, micro_batch=plan.num_sequences, sampler=sampler, guidance_scale=scale)
    for mb in (1, 2, 3):
        out = run(model, diffusion, plan, micro_batch=mb, sampler=sampler, guidance_scale=scale)
        assert out.shape == (13, *LATENT) and torch.isfinite(out).all() and out.abs().max() < 20
        assert (out - ref).abs().max().item() <= 1e-5, (kind, mb)


def test_seed_determinism(model, diffusion):
    plan = anchored_plan(9, T)
    a = run(model, diffusion, plan, seed=3)
    b = run(model, diffusion, plan, seed=3)
    c = run(model, diffusion, plan, seed=4)
    assert torch.equal(a, b)
    assert (a - c).abs().max() > 1e-2


def test_noise_per_frame_does_not_depend_on_grouping():
    z = initial_noise(7, 10, LATENT)
    sub = torch.cat([torch.randn((1, *LATENT), generator=g) for g in frame_generators(7, 0, [3, 8])])
    assert torch.equal(sub, z[[3, 8]])
    assert not torch.equal(z[0], z[1])


def test_guidance_changes_result_and_bad_args(model, diffusion):
    plan = anchored_plan(6, T)
    base = run(model, diffusion, plan)
    for guidance in ("both", "landmarks", "global"):
        assert (run(model, diffusion, plan, guidance_scale=3.0, guidance=guidance) - base).abs().max() > 1e-3
    assert torch.equal(run(model, diffusion, plan, guidance_scale=3.0, guidance="none"), base)
    with pytest.raises(AnchorfaceError, match="sampler"):
        run(model, diffusion, plan, sampler="euler")
    with pytest.raises(AnchorfaceError, match="landmarks for"):
        anchored_diffusion(model, diffusion, plan, *conditions(5), steps=1, latent_shape=LATENT, progress=False)


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_model_without_learned_sigma(model_fixed_sigma, diffusion, sampler):
    """learn_sigma=False samples with the fixed posterior variance (it used to crash under DDPM: the scheduler
    expected a variance channel block): the same result as a learned-sigma model that outputs v = -1."""
    model = EpsNearInput(model_fixed_sigma)
    plan = anchored_plan(9, T)
    events = []
    out = run(model, diffusion, plan, sampler=sampler, steps=4, callback=events.append)
    assert out.shape == (9, *LATENT) and torch.isfinite(out).all()
    assert events[0].outputs.shape[2] == C  # eps only
    ref = run(LowestLearnedVariance(model), diffusion, plan, sampler=sampler, steps=4)
    assert (out - ref).abs().max().item() <= 1e-4
    assert (out - run(model, diffusion, plan, sampler=sampler, steps=4, seed=1)).abs().max() > 1e-2


class RecordingDrops(_Wrapped):
    """Test double around the real sDiT that records which signals each forward pass drops (without `condition`,
    so the sampler passes the drop flags rather than a precomputed C)."""

    condition = None

    def __init__(self, inner):
        super().__init__(inner)
        self.dropped = []

    @property
    def config(self):
        return self.inner.config

    def forward(self, x, t, g=None, lmk=None, drop=None, drop_global=None, drop_landmarks=None, anchor=None):
        def all_(flag):
            return flag is not None and bool(flag.all())
        self.dropped.append({s for s, flag in (("global", drop_global), ("landmarks", drop_landmarks))
                             if all_(drop) or all_(flag)})
        return self.inner(x, t, g=g, lmk=lmk, drop=drop, drop_global=drop_global, drop_landmarks=drop_landmarks,
                          anchor=anchor)


def test_conditions_subset_drops_the_other_signals_in_every_pass(model, diffusion):
    """supp. Table 1's "Guidance" column as a sampler option: `conditions` names the signals given; every forward
    pass drops the others, and classifier-free guidance's unconditional pass drops its `guidance` subset on top."""
    from anchorface.methods.anchored.options import CONDITION_SUBSETS

    plan = anchored_plan(6, T)
    base = run(RecordingDrops(model), diffusion, plan)  # (C recomputed per pass, as in the runs below)
    outs = {}
    for name, given in CONDITION_SUBSETS.items():
        rec = RecordingDrops(model)
        outs[name] = run(rec, diffusion, plan, conditions=name)
        assert rec.dropped and all(d == {"global", "landmarks"} - set(given) for d in rec.dropped), name
    assert torch.equal(outs["both"], base)  # the default gives every signal: unchanged results
    assert all((outs[n] - base).abs().max() > 1e-4 for n in ("none", "landmarks", "global"))
    rec = RecordingDrops(model)
    run(rec, diffusion, plan, conditions="landmarks", guidance_scale=3.0, guidance="both")
    assert rec.dropped[0::2] == [{"global"}] * (len(rec.dropped) // 2)  # conditional passes
    assert rec.dropped[1::2] == [{"global", "landmarks"}] * (len(rec.dropped) // 2)  # unconditional passes
    with pytest.raises(AnchorfaceError, match="unknown conditions 'all'"):
        run(model, diffusion, plan, conditions="all")


@pytest.mark.parametrize("scale", [float("nan"), float("inf"), -float("inf"), 1e30])
def test_non_finite_or_huge_guidance_scale_is_an_error(model, diffusion, scale):
    """A NaN, infinite or absurd CFG scale used to sample black frames without an error."""
    with pytest.raises(AnchorfaceError, match="guidance scale must be") as e:
        run(model, diffusion, anchored_plan(5, T), guidance_scale=scale)
    assert "\n" not in str(e.value)


class RecomputesC(EpsNearInput):
    """The same model without `condition`: the sampler passes g and lmk and C is recomputed in every forward."""

    condition = None


@pytest.mark.parametrize("kind,scale", [("anchored", 1.0), ("multidiffusion", 2.0)])
def test_mapping_runs_once_per_video_and_equals_recomputing(model, diffusion, kind, scale):
    plan = make_plan(kind, 13, T)
    calls = []
    handle = model.mapping.register_forward_hook(lambda mod, args, out: calls.append(tuple(out.shape)))
    try:
        reused = run(EpsNearInput(model), diffusion, plan, steps=4, micro_batch=2, guidance_scale=scale)
        assert calls == [(1, 13, 32)] * (2 if scale != 1.0 else 1)  # C of all 13 frames, once per pass kind
        calls.clear()
        again = run(RecomputesC(model), diffusion, plan, steps=4, micro_batch=2, guidance_scale=scale)
        assert len(calls) == 4 * -(-plan.num_sequences // 2) * (2 if scale != 1.0 else 1)
    finally:
        handle.remove()
    assert (reused - again).abs().max().item() <= 1e-5


def test_bf16_weights_sample_close_to_float32(model, diffusion):
    """The bf16 inference option (from_pretrained(dtype=torch.bfloat16)): the sampler runs the model in its dtype
    (C included) and returns float32 latents close to the float32 model's."""
    import copy

    plan = anchored_plan(9, T)
    ref = run(EpsNearInput(model), diffusion, plan, sampler="ddim", steps=3)
    low = run(EpsNearInput(copy.deepcopy(model).to(torch.bfloat16)), diffusion, plan, sampler="ddim", steps=3)
    assert low.dtype == torch.float32 and torch.isfinite(low).all()
    assert 0 < (low - ref).abs().max() < 0.1
