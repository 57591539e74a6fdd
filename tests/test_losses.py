"""Specification of the cross-tokenizer KD losses (SPEC §5)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from xtok_core.errors import XtokError
from xtok_core.losses import (
    DistillLoss, TeacherTerm, TeacherDistribution, aligned_rows, as_sparse_w, gold_loss, hkl_loss, host_stats, identity_w,
    pkl_loss, trl_gold_loss, uld_loss,
)
from xtok_core.losses.functional import pkl_rows

V_S, V_T = 7, 9
# gradcheck runs backward several times; the first call uses the gradient written during forward, later
# ones recompute it, which may differ in the last bits
NONDET = 1e-12
EPS32 = torch.finfo(torch.float32).eps  # 1.19e-7


def f32_tol(n_terms: int, scale: float = 1.0) -> float:
    """Worst-case rounding of a float32 sum of n terms each at most `scale` in magnitude (any reduction order)."""
    return n_terms * EPS32 * scale


LOSSES = {"pkl": pkl_loss, "hkl": hkl_loss, "gold": gold_loss, "gold-trl": trl_gold_loss,
          "uld": lambda s, t, W, **kw: uld_loss(s, t, **kw)}


def tiny_w(dtype=torch.float64) -> torch.Tensor:
    """A 7 x 9 W with every row kind the losses care about; column 8 is reached by no row.

    row 0: exact to 0; row 1: exact to 1; row 2: exact to 1 as well (GOLD collision: row 1 wins);
    row 3: 0.909 / 0.091 (H-KL joins with 3); row 4: 0.5 / 0.5 (H-KL: no); row 5: 0.7 to 6, row 6: 0.8 to 6
    (H-KL collision: row 6 wins).
    """
    rows = [0, 1, 2, 3, 3, 4, 4, 5, 5, 6, 6]
    cols = [0, 1, 1, 3, 4, 2, 5, 6, 7, 6, 2]
    vals = [1.0, 1.0, 1.0, 0.909, 0.091, 0.5, 0.5, 0.7, 0.3, 0.8, 0.2]
    return torch.sparse_coo_tensor(torch.tensor([rows, cols]), torch.tensor(vals, dtype=dtype), (V_S, V_T)).coalesce()


@dataclass
class FakeAlignment:
    """The fields of align_batch's BatchAlignment, built from group sizes."""

    student_ids: torch.Tensor
    student_mask: torch.Tensor
    teacher_ids: torch.Tensor
    teacher_mask: torch.Tensor
    student_group: torch.Tensor
    teacher_group: torch.Tensor
    s_start: torch.Tensor
    s_end: torch.Tensor
    t_start: torch.Tensor
    t_end: torch.Tensor
    group_mask: torch.Tensor


def make_alignment(groups_per_seq, v_s=V_S, v_t=V_T, seed=0) -> FakeAlignment:
    """groups_per_seq: per sequence, a list of (student tokens, teacher tokens) per group."""
    g = torch.Generator().manual_seed(seed)
    t_s = max(sum(a for a, _ in gs) for gs in groups_per_seq)
    t_t = max(sum(b for _, b in gs) for gs in groups_per_seq)
    n_g = max(len(gs) for gs in groups_per_seq)
    bsz = len(groups_per_seq)
    f = dict(student_group=torch.full((bsz, t_s), -1), teacher_group=torch.full((bsz, t_t), -1),
             s_start=torch.full((bsz, n_g), -1), s_end=torch.full((bsz, n_g), -1),
             t_start=torch.full((bsz, n_g), -1), t_end=torch.full((bsz, n_g), -1),
             group_mask=torch.zeros(bsz, n_g, dtype=torch.bool))
    for b, gs in enumerate(groups_per_seq):
        i = j = 0
        for k, (a, c) in enumerate(gs):
            f["student_group"][b, i:i + a] = k
            f["teacher_group"][b, j:j + c] = k
            f["s_start"][b, k], f["s_end"][b, k] = i, i + a - 1
            f["t_start"][b, k], f["t_end"][b, k] = j, j + c - 1
            f["group_mask"][b, k] = True
            i, j = i + a, j + c
    return FakeAlignment(
        student_ids=torch.randint(0, v_s, (bsz, t_s), generator=g), student_mask=f["student_group"] >= 0,
        teacher_ids=torch.randint(0, v_t, (bsz, t_t), generator=g), teacher_mask=f["teacher_group"] >= 0, **f)


GROUPS = [[(1, 1), (2, 1), (1, 3), (2, 2), (1, 1), (1, 2)], [(1, 1), (1, 2), (3, 1), (1, 1)]]


def batch_logits(al, v_s=V_S, v_t=V_T, dtype=torch.float64, seed=1):
    g = torch.Generator().manual_seed(seed)
    zs = torch.randn(*al.student_mask.shape, v_s, generator=g, dtype=dtype) * 2
    zt = torch.randn(*al.teacher_mask.shape, v_t, generator=g, dtype=dtype) * 2
    return zs.requires_grad_(), zt


# ---------------------------------------------------------------- zero loss for equal distributions
@pytest.mark.parametrize("kind", ["pkl", "hkl", "gold"])
def test_identical_distributions_give_zero_loss_under_identity_w(kind):
    z = torch.randn(16, 50) * 3
    loss = LOSSES[kind](z.clone().requires_grad_(), z, identity_w(50), temperature=2.0)
    assert abs(float(loss.detach())) < f32_tol(50, 4.0)  # 50 terms per row, each ≤ τ² = 4 in magnitude


def test_same_logits_give_positive_loss_under_a_non_identity_w():
    z = torch.randn(16, V_S, dtype=torch.float64)
    assert float(pkl_loss(z, torch.randn(16, V_T, dtype=torch.float64), tiny_w())) > 0.01


def test_uld_is_zero_for_permuted_equal_distributions_of_different_widths():
    zs = torch.randn(8, 40) * 2
    zt = torch.full((8, 64), -torch.inf)  # 24 extra teacher tokens with probability 0: the zero padding
    perm = torch.randperm(64)[:40]
    zt[:, perm] = zs
    assert abs(float(uld_loss(zs.requires_grad_(), zt))) < f32_tol(64)  # 64 probabilities, each ≤ 1
    assert float(uld_loss(zs, zt.roll(1, dims=0))) > 0.01


# ---------------------------------------------------------------- finite-difference gradients
@pytest.mark.parametrize("position", ["boundary", "chunk_mean", "chain"])
@pytest.mark.parametrize("kind", ["pkl", "hkl", "gold", "gold-trl", "uld"])
def test_gradients_match_finite_differences_with_fixed_w(kind, position):
    al = make_alignment(GROUPS)
    zs, zt = batch_logits(al)
    loss = DistillLoss(TeacherTerm(tiny_w(), loss=kind), position=position, kd_weight=0.7, temperature=1.5,
                       uncommon_topk=3, chunk_size=3)
    assert torch.autograd.gradcheck(lambda z: loss(z, zt, al)[0], (zs,), nondet_tol=NONDET, fast_mode=True)


@pytest.mark.parametrize("position", ["boundary", "chunk_mean", "chain"])
def test_gradients_match_finite_differences_with_learned_w(position):
    al = make_alignment(GROUPS)
    zs, zt = batch_logits(al)
    loss = DistillLoss(TeacherTerm(tiny_w(), learnable=True), position=position, kd_weight=0.7, chunk_size=3)
    theta = (loss.learned["teacher0"].logits.detach().double() + 0.3 * torch.randn(11, dtype=torch.float64))

    def f(z, th):
        return torch.func.functional_call(loss, {"learned.teacher0.logits": th}, (z, zt, al))[0]

    assert torch.autograd.gradcheck(f, (zs, theta.requires_grad_()), nondet_tol=NONDET, fast_mode=True)


@pytest.mark.parametrize("kind", ["pkl", "hkl", "gold", "gold-trl", "uld"])
def test_row_losses_gradients_match_finite_differences_with_log_offsets(kind):
    g = torch.Generator().manual_seed(3)
    zs = torch.randn(5, V_S, generator=g, dtype=torch.float64, requires_grad=True)
    zt = torch.randn(5, V_T, generator=g, dtype=torch.float64)
    off = (-torch.rand(5, generator=g, dtype=torch.float64)).requires_grad_()
    t_off = -torch.rand(5, generator=g, dtype=torch.float64)
    f = LOSSES[kind]
    assert torch.autograd.gradcheck(
        lambda z, o: f(z, zt, tiny_w(), temperature=0.7, chunk_size=2, student_log_offset=o,
                       teacher_log_offset=t_off), (zs, off), nondet_tol=NONDET, fast_mode=True)


# ---------------------------------------------------------------- chunked == naive
@pytest.mark.parametrize("chunk_size", [1, 7, 16, 40, 1000])
@pytest.mark.parametrize("kind", ["pkl", "hkl", "gold", "gold-trl", "uld"])
def test_chunked_path_equals_naive_dense_path(kind, chunk_size):
    """N = 40 rows: chunk sizes that divide it, that don't (7), and one larger than N."""
    g = torch.Generator().manual_seed(5)
    v_s, v_t = 300, 420
    nnz = 3 * v_s
    rows = torch.arange(v_s).repeat_interleave(3)
    cols = torch.randint(0, v_t - 20, (nnz,), generator=g)
    W = torch.sparse_coo_tensor(torch.stack([rows, cols]), torch.rand(nnz, generator=g), (v_s, v_t)).coalesce()
    zs = (torch.randn(40, v_s, generator=g) * 3).requires_grad_()
    zt = torch.randn(40, v_t, generator=g) * 3
    f = LOSSES[kind]
    fast = f(zs, zt, W, temperature=2.0, chunk_size=chunk_size)
    (g_fast,) = torch.autograd.grad(fast, zs)
    ref = f(zs, zt, W, temperature=2.0, naive=True)
    (g_ref,) = torch.autograd.grad(ref, zs)
    # float32: each row sums v_t terms of size ≤ τ²·(|log p| + |log(q + ε)|) ≤ 4·(|ref| + 23) (ε = 1e-10)
    assert abs(float(fast) - float(ref)) < f32_tol(v_t, 4.0 * (abs(float(ref)) + 23.0))
    # a gradient entry sums v_t products of probabilities (≤ 1) scaled by τ / N
    assert float((g_fast - g_ref).abs().max()) < f32_tol(v_t, 2.0 / 40)


@pytest.mark.parametrize("kind", ["pkl", "hkl", "uld"])
def test_recomputing_backward_equals_fused_and_a_retained_graph_can_backward_twice(kind):
    g = torch.Generator().manual_seed(4)
    zs = torch.randn(11, V_S, generator=g).requires_grad_()
    zt = torch.randn(11, V_T, generator=g)
    f = LOSSES[kind]
    fused = f(zs, zt, tiny_w(torch.float32), chunk_size=4)
    (g1,) = torch.autograd.grad(fused, zs, retain_graph=True)
    (g2,) = torch.autograd.grad(fused, zs)  # the second pass recomputes
    kw = {"naive": True} if kind != "pkl" else {"recompute": True, "chunk_size": 4}
    (g3,) = torch.autograd.grad(f(zs, zt, tiny_w(torch.float32), **kw), zs)
    tol = f32_tol(V_T, 1.0 / 11)  # float32 gradient entries: V_T products of probabilities, over 11 rows
    assert float((g1 - g2).abs().max()) < tol and float((g1 - g3).abs().max()) < tol


def test_rows_weighted_differently_get_their_own_upstream_gradient():
    from xtok_core.losses.functional import common_set_loss

    g = torch.Generator().manual_seed(10)
    zs = torch.randn(9, V_S, generator=g).bfloat16().requires_grad_()
    zt = torch.randn(9, V_T, generator=g)
    weights = torch.rand(9, generator=g)
    for rows_fn in (lambda **kw: pkl_rows(zs, zt, tiny_w(torch.float32), **kw)[0],
                    lambda **kw: common_set_loss(zs, zt, tiny_w(torch.float32), rule="top1", reduce=False, **kw)):
        (fused,) = torch.autograd.grad(rows_fn(chunk_size=4) @ weights, zs)
        (ref,) = torch.autograd.grad(rows_fn(naive=True) @ weights, zs)
        assert float((fused.float() - ref.float()).abs().max()) < 2e-3  # bf16 gradients


def test_chunked_learned_w_gradient_equals_naive():
    g = torch.Generator().manual_seed(6)
    sw = as_sparse_w(tiny_w(torch.float32))
    values = (sw.values + 0.1 * torch.rand(11, generator=g)).requires_grad_()
    zs = torch.randn(13, V_S, generator=g).requires_grad_()
    zt = torch.randn(13, V_T, generator=g)
    grads = []
    for kw in ({"chunk_size": 4}, {"naive": True}):
        rows, _ = pkl_rows(zs, zt, sw, values=values, **kw)
        grads.append(torch.autograd.grad(rows.mean(), [zs, values]))
    for a, b in zip(*grads):
        assert float((a - b).abs().max()) < f32_tol(13 * V_T)  # float32: sums over 13 rows of V_T terms ≤ 1


def test_bf16_logits_are_computed_in_fp32():
    g = torch.Generator().manual_seed(7)
    zs = torch.randn(12, V_S, generator=g).bfloat16().requires_grad_()
    zt = torch.randn(12, V_T, generator=g).bfloat16()
    loss = pkl_loss(zs, zt, tiny_w(torch.float32), chunk_size=5)
    assert loss.dtype == torch.float32
    want = float(pkl_loss(zs.float(), zt.float(), tiny_w(torch.float32)))
    assert abs(float(loss) - want) < f32_tol(V_T, abs(want) + 23.0)  # float32: V_T terms ≤ |KL| + |log ε|
    (grad,) = torch.autograd.grad(loss, zs)
    assert grad.dtype == torch.bfloat16 and bool(torch.isfinite(grad).all())


# ---------------------------------------------------------------- P-KL's unreachable teacher mass
def test_unreachable_teacher_mass_is_reported_and_adds_no_gradient():
    zs = torch.randn(4, V_S, dtype=torch.float64, requires_grad=True)
    zt = torch.randn(4, V_T, dtype=torch.float64)
    _, stats = pkl_loss(zs, zt, tiny_w(), return_stats=True)
    assert stats["unreachable_mass"] == pytest.approx(float(torch.softmax(zt, -1)[:, 8].mean()))
    zt_more = zt.clone()
    zt_more[:, 8] += 2.0  # more mass on column 8, which no student row reaches
    (g1,) = torch.autograd.grad(pkl_loss(zs, zt, tiny_w()), zs)
    p, p_more = torch.softmax(zt, -1), torch.softmax(zt_more, -1)
    # the reachable teacher distribution shrinks uniformly, so the student gradient scales by the same factor
    (g2,) = torch.autograd.grad(pkl_loss(zs, zt_more, tiny_w()), zs)
    scale = (p_more[:, :8].sum(-1) / p[:, :8].sum(-1))[:, None]
    assert torch.allclose(g2, g1 * scale, atol=1e-12)


# ---------------------------------------------------------------- common sets
def test_hkl_common_set_threshold_and_collisions():
    common = as_sparse_w(tiny_w()).common_set("top1", 0.6)
    pairs = dict(zip(common.student.tolist(), common.teacher.tolist()))
    assert pairs[3] == 3  # top-1 weight 0.909 joins
    assert 4 not in pairs  # top-1 weight 0.5 does not
    assert pairs[6] == 6 and 5 not in pairs  # column 6 claimed by 0.7 and 0.8: the highest weight wins
    assert pairs[1] == 1 and 2 not in pairs  # column 1 claimed twice at 1.0: the lowest student id wins
    assert sorted(common.student_rest.tolist()) == [2, 4, 5] and 1 not in common.teacher_rest.tolist()


def test_gold_common_set_is_the_exact_rows_lowest_student_wins():
    common = as_sparse_w(tiny_w()).common_set("exact")
    assert dict(zip(common.student.tolist(), common.teacher.tolist())) == {0: 0, 1: 1}


def test_hkl_common_set_on_the_default_pair(projection, default_pair):
    W = projection()
    llama, qwen = default_pair
    s_id = {b: i for i, b in enumerate(llama.token_bytes) if b is not None}
    t_id = {b: i for i, b in enumerate(qwen.token_bytes) if b is not None}
    common = as_sparse_w(W).common_set("top1")
    pairs = dict(zip(common.student.tolist(), common.teacher.tolist()))
    # "lardan" -> Qwen "lard" (0.909) + "an" (0.091): nobody else claims "lard", so it joins
    assert W.row(s_id[b"lardan"])[1][0] == pytest.approx(0.90909, abs=1e-4)
    assert pairs[s_id[b"lardan"]] == t_id[b"lard"]
    # "2" (exact, 1.0), "22" (-> "2","2", one column at 1.0) and "202" (-> "2" at 0.90991) all claim Qwen "2":
    # the highest weight wins, the tie between "2" and "22" goes to the lowest student id
    assert W.row(s_id[b"202"])[1][0] == pytest.approx(0.90991, abs=1e-5)
    assert pairs[s_id[b"2"]] == t_id[b"2"]
    assert s_id[b"22"] not in pairs and s_id[b"202"] not in pairs
    assert len(set(pairs.values())) == len(pairs)


def test_gold_common_set_on_the_default_pair_is_exact_rows(projection, default_pair):
    W = projection()
    llama, _ = default_pair
    common = as_sparse_w(W).common_set("exact")
    assert (W.kinds[common.student.numpy()] == 0).all()
    assert int((W.kinds == 0).sum()) >= len(common.student) > 100_000
    s_id = {b: i for i, b in enumerate(llama.token_bytes) if b is not None}
    assert s_id[b"2"] in set(common.student.tolist()) and s_id[b"202"] not in set(common.student.tolist())


@pytest.mark.parametrize("kind", ["hkl", "gold"])
def test_common_set_losses_are_never_negative_on_the_default_pair(projection, kind):
    """The common-set term is a generalised KL: >= 0 for any pair of distributions, so dynamic scaling
    λ = CE/KD never sees a negative KD (a plain KL restricted to the common ids goes negative)."""
    W = projection()
    g = torch.Generator().manual_seed(3)
    for scale in (0.1, 1.0, 5.0):
        zs, zt = scale * torch.randn(4, 128256, generator=g), scale * torch.randn(4, 151665, generator=g)
        assert float(LOSSES[kind](zs, zt, W)) > 0


def test_pkl_on_the_default_pair_model_widths_reports_padding_columns_unreachable(projection):
    W = projection(teacher_vocab_size=151936)
    assert W.shape == (128256, 151936)
    g = torch.Generator().manual_seed(8)
    zs = torch.randn(3, 128256, generator=g).requires_grad_()
    zt = torch.randn(3, 151936, generator=g)
    zt[:, 151665:] = -torch.inf
    _, stats = pkl_loss(zs, zt, W, return_stats=True, chunk_size=2)
    unreached = ~as_sparse_w(W).reachable
    assert bool(unreached[151665:].all())
    p = torch.softmax(zt, -1)
    expected = float(p[:, unreached].sum(-1).mean())
    # float32 sums of the unreached probabilities: n terms, each ≤ the largest one
    assert stats["unreachable_mass"] == pytest.approx(expected, abs=f32_tol(int(unreached.sum()), float(p.max())))
    zt[:, 151700] = 5.0  # a padding column the teacher likes: its mass is reported
    _, stats = pkl_loss(zs, zt, W, return_stats=True)
    assert stats["unreachable_mass"] > 0.9 * float(torch.softmax(zt, -1)[:, 151700].mean())


def test_wrong_w_shape_is_a_one_line_error():
    with pytest.raises(XtokError, match="vocabularies 7 .* and 10"):
        pkl_loss(torch.randn(2, V_S), torch.randn(2, 10), tiny_w())


def test_dense_w_is_refused():
    with pytest.raises(XtokError, match="dense"):
        pkl_loss(torch.randn(2, V_S), torch.randn(2, V_T), tiny_w().to_dense())


# ---------------------------------------------------------------- DistillLoss
def test_dynamic_scaling_makes_kd_term_equal_ce_without_gradient_through_lambda():
    al = make_alignment(GROUPS)
    zs, zt = batch_logits(al)
    dl = DistillLoss(TeacherTerm(tiny_w()))
    loss, stats = dl(zs, zt, al)
    stats = host_stats(stats)  # the loss keeps 0-dim tensors; logging converts them
    assert stats["lambda"] * stats["kd"] == pytest.approx(stats["ce"], rel=1e-12)
    assert float(loss) == pytest.approx(2 * stats["ce"], rel=1e-12)
    (g,) = torch.autograd.grad(loss, zs)
    (g_ce,) = torch.autograd.grad(dl.ce(zs, al.student_ids, al.student_mask), zs)
    (g_kd,) = torch.autograd.grad(DistillLoss(TeacherTerm(tiny_w()), kd_weight=1.0, ce_weight=0.0)(zs, zt, al)[0], zs)
    assert torch.allclose(g, g_ce + stats["lambda"] * g_kd, atol=1e-12)


def test_fixed_kd_weight_is_the_ablation():
    al = make_alignment(GROUPS)
    zs, zt = batch_logits(al)
    loss, stats = DistillLoss(TeacherTerm(tiny_w()), kd_weight=0.25)(zs, zt, al)
    stats = host_stats(stats)  # the loss keeps 0-dim tensors; logging converts them
    assert stats["lambda"] == 0.25 and float(loss) == pytest.approx(stats["ce"] + 0.25 * stats["kd"])


def test_temperature_scales_kd_by_tau_squared():
    al = make_alignment(GROUPS)
    zs, zt = batch_logits(al)
    _, stats = DistillLoss(TeacherTerm(tiny_w()), kd_weight=1.0, temperature=2.0)(zs, zt, al)
    stats = host_stats(stats)  # the loss keeps 0-dim tensors; logging converts them
    r = aligned_rows(zs.detach(), zt, al, temperature=2.0)
    per_row = pkl_rows(r.student, r.teacher, tiny_w(), temperature=2.0)[0]
    assert stats["kd"] == pytest.approx(4.0 * float(per_row.mean()), rel=1e-12)
    assert float(pkl_loss(r.student, r.teacher, tiny_w(), temperature=2.0)) == pytest.approx(stats["kd"], rel=1e-12)


def test_same_tokenizer_teacher_equals_plain_kl_in_a_multi_teacher_loss():
    al = make_alignment(GROUPS)
    zs, zt = batch_logits(al)
    z_same = torch.randn(*zs.shape, dtype=torch.float64)
    dl = DistillLoss([TeacherTerm(tiny_w(), alpha=0.3, name="cross"), TeacherTerm(None, alpha=0.7, name="same")],
                     kd_weight=1.0)
    loss, stats = dl(zs, [zt, z_same], [al, None])
    stats = host_stats(stats)  # the loss keeps 0-dim tensors; logging converts them
    keep = al.student_mask[:, :-1] & al.student_mask[:, 1:]
    plain = F.kl_div(torch.log_softmax(zs[:, :-1][keep], -1), torch.log_softmax(z_same[:, :-1][keep], -1),
                     log_target=True, reduction="batchmean")
    assert stats["kd/same"] == pytest.approx(float(plain), rel=1e-10)
    assert stats["kd"] == pytest.approx(0.3 * stats["kd/cross"] + 0.7 * stats["kd/same"], rel=1e-12)
    assert float(loss) == pytest.approx(stats["ce"] + stats["kd"], rel=1e-12)


def test_position_modes_agree_on_one_to_one_groups_and_differ_on_merged_ones():
    one_to_one = make_alignment([[(1, 1)] * 6, [(1, 1)] * 4])
    zs, zt = batch_logits(one_to_one)
    values = {p: float(DistillLoss(TeacherTerm(tiny_w()), position=p, kd_weight=1.0)(zs, zt, one_to_one)[1]["kd"])
              for p in ("boundary", "chunk_mean", "chain")}
    assert values["chunk_mean"] == pytest.approx(values["boundary"]) == values["chain"]
    al = make_alignment(GROUPS)
    zs, zt = batch_logits(al)
    merged = {p: float(DistillLoss(TeacherTerm(tiny_w()), position=p, kd_weight=1.0)(zs, zt, al)[1]["kd"])
              for p in ("boundary", "chunk_mean", "chain")}
    assert len({round(v, 9) for v in merged.values()}) == 3


def test_chain_mode_multiplies_by_the_later_actual_tokens_probabilities():
    # one sequence: group 0 = 1:1, group 1 = 2 student tokens : 1 teacher token
    al = make_alignment([[(1, 1), (2, 1), (1, 1)]])
    zs, zt = batch_logits(al)
    r = aligned_rows(zs, zt, al, position="chain")
    # pair 0 is group 0's boundary (positions 0 / 0) predicting group 1 = student tokens 1, 2
    lp = torch.log_softmax(zs[0, 1], -1)[al.student_ids[0, 2]]
    assert float(r.student_offset[0]) == pytest.approx(float(lp))
    assert float(r.teacher_offset[0]) == 0.0
    assert torch.equal(r.student[0], zs[0, 0])


def test_pairs_skip_the_last_group_and_padding():
    al = make_alignment(GROUPS)
    zs, zt = batch_logits(al)
    _, stats = DistillLoss(TeacherTerm(tiny_w()))(zs, zt, al)
    stats = host_stats(stats)  # the loss keeps 0-dim tensors; logging converts them
    assert stats["pairs/teacher0"] == (len(GROUPS[0]) - 1) + (len(GROUPS[1]) - 1)


def test_learned_w_starts_at_w_keeps_rows_stochastic_and_has_its_own_lr():
    dl = DistillLoss(TeacherTerm(tiny_w(torch.float32), learnable=True))
    lw = dl.learned["teacher0"]
    # float32 softmax over each row's ≤ 2 non-zeros
    assert torch.allclose(lw.values(), as_sparse_w(tiny_w(torch.float32)).values, atol=f32_tol(2))
    (group,) = dl.param_groups(lr_w=1e-2)
    assert group["lr"] == 1e-2 and group["params"] == [lw.logits]
    al = make_alignment(GROUPS)
    zs, zt = batch_logits(al, dtype=torch.float32)
    opt = torch.optim.SGD(dl.param_groups(lr_w=0.5))
    before = dl(zs.detach(), zt, al)[1]["kd"]
    for _ in range(5):
        opt.zero_grad()
        dl(zs.detach(), zt, al)[0].backward()
        opt.step()
    assert dl(zs.detach(), zt, al)[1]["kd"] < before
    row_sums = np.asarray(lw.matrix().sum(axis=1)).ravel()
    assert np.allclose(row_sums, 1.0, atol=f32_tol(2))  # float32 sums of ≤ 2 weights
    assert lw.matrix().nnz == 11  # the sparsity pattern is fixed


def test_learnable_w_is_refused_for_losses_that_do_not_use_its_values():
    with pytest.raises(XtokError, match="learnable W needs a P-KL teacher"):
        DistillLoss(TeacherTerm(tiny_w(), loss="hkl", learnable=True))


def test_alignment_for_another_batch_is_a_one_line_error():
    al = make_alignment(GROUPS)
    zs, zt = batch_logits(al)
    with pytest.raises(XtokError, match="alignment is for"):
        DistillLoss(TeacherTerm(tiny_w()))(zs[:, :-1], zt, al)


def test_boundary_pairs_through_align_batch_on_the_default_pair(projection, default_pair):
    """A teacher whose distribution at every group boundary is exactly the student's projected one gives
    P-KL ~ 0: the rows DistillLoss pairs are the (s_end, t_end) of consecutive text groups of align_spans."""
    align = pytest.importorskip("xtok_core.align")
    llama, qwen = default_pair
    W = projection()
    texts = ["Total: $1,234.56 on 2024-03-15.", "for i in range(10):\n    x += 202"]
    al = align.align_batch(texts, llama, qwen, add_special_tokens=True)
    g = torch.Generator().manual_seed(9)
    zs = torch.randn(*al.student_ids.shape, W.shape[0], generator=g).requires_grad_()
    zt = torch.randn(*al.teacher_ids.shape, W.shape[1], generator=g)
    bos = int(al.student_ids[0, 0] == llama.roles["bos"])
    w_t = as_sparse_w(W).matrix_t()
    expected = 0
    for b, text in enumerate(texts):
        groups = [gr for gr in align.align_spans(text, llama, qwen).groups if gr.kind != "special"]
        for gr, nxt in zip(groups, groups[1:]):
            s_pos, t_pos = gr.student[-1] + bos, gr.teacher[-1]
            q = (w_t @ torch.softmax(zs[b, s_pos].detach(), -1)[:, None])[:, 0]
            zt[b, t_pos] = q.log()
            expected += 1
    loss, stats = DistillLoss(TeacherTerm(W), kd_weight=1.0)(zs, zt, al)
    stats = host_stats(stats)  # the loss keeps 0-dim tensors; logging converts them
    assert stats["pairs/teacher0"] == expected > 20
    assert abs(stats["kd/teacher0"]) < 1e-4  # only the ε = 1e-10 smoothing over ~150k columns
    assert stats["unreachable_mass/teacher0"] == 0.0
    loss.backward()
    assert bool(torch.isfinite(zs.grad).all())


def test_pkl_teacher_topk_restricts_to_the_union_of_top_columns():
    g = torch.Generator().manual_seed(11)
    zs = torch.randn(5, V_S, dtype=torch.float64, generator=g).requires_grad_()
    zt = torch.randn(5, V_T, dtype=torch.float64, generator=g)
    W = tiny_w()
    # k = V_t is the plain loss
    assert float(pkl_loss(zs, zt, W, teacher_topk=V_T)) == pytest.approx(float(pkl_loss(zs, zt, W)), abs=1e-12)
    # k = 2: the teacher renormalised over the union of each row's top 2, the student projected into those columns
    cols = torch.topk(zt, 2, dim=-1).indices.unique()
    assert len(cols) < V_T
    pt = torch.softmax(zt[:, cols], -1)
    q = torch.softmax(zs, -1) @ W.to_dense()[:, cols]
    want = (pt * (pt.log() - (q + 1e-10).log())).sum(-1).mean()
    got = pkl_loss(zs, zt, W, teacher_topk=2)
    # W is held in float32: each of the V_T terms p·log q carries its relative error, |log(q + ε)| ≤ 23
    assert float(got) == pytest.approx(float(want), abs=f32_tol(V_T, 23.0))
    g_got, = torch.autograd.grad(got, zs)
    g_want, = torch.autograd.grad(want, zs)
    assert torch.allclose(g_got, g_want, atol=f32_tol(V_T))  # V_T float32 weights times probabilities ≤ 1
    with pytest.raises(XtokError):
        pkl_loss(zs, zt, W, teacher_topk=0)


# ---------------------------------------------------------------- TRL's hybrid GOLD against a port of its formula
def trl_hybrid_reference(ps, pt, teacher_to_student, beta=0.5):
    """TRL's GOLD hybrid loss on aligned probabilities, rewritten from its published formula: matched
    teacher ids t (sorted) with their student ids; JSD_β of the raw matched probabilities through
    log(clamp(p, 1e-8)) and a log-space mixture, summed per row and averaged; sorted L1 of the unmatched
    probabilities, zero-padded, summed and divided by the number of rows; weights n_matched / V_t and the rest."""
    t_ids = sorted(teacher_to_student)
    s_ids = [teacher_to_student[t] for t in t_ids]
    n = ps.shape[0]
    log_s, log_t = ps[:, s_ids].clamp_min(1e-8).log(), pt[:, t_ids].clamp_min(1e-8).log()
    b = torch.tensor(beta, dtype=ps.dtype)
    mix = torch.logaddexp(log_s + torch.log1p(-b), log_t + torch.log(b))
    kl_t = F.kl_div(mix, log_t, reduction="none", log_target=True)
    kl_s = F.kl_div(mix, log_s, reduction="none", log_target=True)
    matched = (b * kl_t + (1 - b) * kl_s).sum(-1).mean()
    s_rest = [i for i in range(ps.shape[1]) if i not in set(s_ids)]
    t_rest = [i for i in range(pt.shape[1]) if i not in set(t_ids)]
    a = ps[:, s_rest].sort(-1, descending=True).values
    c = pt[:, t_rest].sort(-1, descending=True).values
    width = max(a.shape[1], c.shape[1])
    unmatched = F.l1_loss(F.pad(a, (0, width - a.shape[1])), F.pad(c, (0, width - c.shape[1])), reduction="sum") / n
    w = len(t_ids) / pt.shape[1]
    return w * matched + (1 - w) * unmatched


def test_trl_gold_equals_a_port_of_trls_hybrid_formula_on_fixed_tensors():
    g = torch.Generator().manual_seed(21)
    zs = torch.randn(6, V_S, generator=g, dtype=torch.float64)
    zt = torch.randn(6, V_T, generator=g, dtype=torch.float64)
    ps, pt = torch.softmax(zs, -1), torch.softmax(zt, -1)
    assert float(min(ps.min(), pt.min())) > 1e-8  # TRL's clamp is inactive: the two must agree to rounding
    # tiny_w's exact rows: 0 -> 0, 1 -> 1 and 2 -> 1 (TRL's vocabulary map keeps one student id per teacher id;
    # xtok's common set keeps the lowest, row 1)
    ref = trl_hybrid_reference(ps, pt, {0: 0, 1: 1})
    ours = trl_gold_loss(zs, zt, tiny_w())
    # float64 sums over at most max(V_S, V_T) terms of magnitude <= 1
    assert float(ours) == pytest.approx(float(ref), abs=V_T * 2.3e-16 * 8)
    assert float(ours) != pytest.approx(float(gold_loss(zs, zt, tiny_w())), abs=1e-3)  # NeMo-RL's is another loss
    # on a larger W with a quarter of the rows exact (adaptive weight 0.25·V_s/V_t), chunked
    v_s, v_t = 200, 240
    rows = torch.arange(v_s)
    cols = torch.randperm(v_t, generator=g)[:v_s]
    vals = torch.where(rows % 4 == 0, 1.0, 0.6).double()
    extra_r, extra_c = rows[rows % 4 != 0], (cols[rows % 4 != 0] + 1) % v_t
    W = torch.sparse_coo_tensor(torch.stack([torch.cat([rows, extra_r]), torch.cat([cols, extra_c])]),
                                torch.cat([vals, torch.full((len(extra_r),), 0.4, dtype=torch.float64)]),
                                (v_s, v_t)).coalesce()
    zs = torch.randn(9, v_s, generator=g, dtype=torch.float64)
    zt = torch.randn(9, v_t, generator=g, dtype=torch.float64)
    t2s = {int(cols[i]): int(i) for i in range(0, v_s, 4)}
    ref = trl_hybrid_reference(torch.softmax(zs, -1), torch.softmax(zt, -1), t2s)
    ours = trl_gold_loss(zs, zt, W, chunk_size=4)
    assert float(ours) == pytest.approx(float(ref), abs=v_t * 2.3e-16 * 8)


def test_trl_gold_is_zero_for_equal_distributions_and_reaches_distill_loss():
    z = torch.randn(5, 30, dtype=torch.float64) * 2
    assert abs(float(trl_gold_loss(z, z, identity_w(30)))) < 30 * 2.3e-16 * 8
    al = make_alignment(GROUPS)
    zs, zt = batch_logits(al)
    crit = DistillLoss(TeacherTerm(tiny_w(), loss="gold-trl"), kd_weight=1.0, ce_weight=0.0)
    loss, stats = crit(zs, zt, al)
    stats = host_stats(stats)  # the loss keeps 0-dim tensors; logging converts them
    rows = aligned_rows(zs, zt, al)
    assert float(loss) == pytest.approx(float(trl_gold_loss(rows.student, rows.teacher, tiny_w())), rel=1e-12)
    with pytest.raises(XtokError, match="beta"):
        trl_gold_loss(z, z, identity_w(30), beta=1.0)


# ---------------------------------------------------------------- the teacher as top-K ids + log-probs + tail mass
def topk_teacher(zt, k, temperature=1.0, next_log_prob=None):
    """The teacher rows `zt (…, V)` kept as their k most likely ids, log-probs at τ and log tail mass."""
    lp = torch.log_softmax(zt / temperature, -1)
    vals, ids = lp.topk(k, dim=-1)
    tail = torch.logsumexp(lp.scatter(-1, ids, -torch.inf), -1)
    return TeacherDistribution.from_topk(ids, vals, tail, zt.shape[-1], temperature, next_log_prob=next_log_prob)


def rows_of(kind, zs, teacher, W, **kw):
    from xtok_core.losses.functional import common_set_loss, kl_loss

    if kind == "pkl":
        return pkl_rows(zs, teacher, W, **kw)[0]
    if kind in ("hkl", "gold"):
        return common_set_loss(zs, teacher, W, rule="top1" if kind == "hkl" else "exact", reduce=False, **kw)
    if kind == "gold-trl":
        return trl_gold_loss(zs, teacher, W, reduce=False, **kw)
    if kind == "kl":
        return kl_loss(zs, teacher, reduce=False, **kw)
    return uld_loss(zs, teacher, reduce=False, **kw)


@pytest.mark.parametrize("kind", ["pkl", "hkl", "gold", "gold-trl", "uld", "kl"])
def test_topk_teacher_with_k_equal_to_the_vocabulary_equals_the_full_logits(kind):
    g = torch.Generator().manual_seed(30)
    v_s = V_T if kind == "kl" else V_S
    W = identity_w(V_T).to(torch.float64) if kind == "kl" else tiny_w()
    zs = (torch.randn(10, v_s, generator=g, dtype=torch.float64) * 2).requires_grad_()
    zt = torch.randn(10, V_T, generator=g, dtype=torch.float64) * 2
    full = rows_of(kind, zs, zt, W, temperature=1.5, chunk_size=3)
    cached = rows_of(kind, zs, topk_teacher(zt, V_T, 1.5), W, temperature=1.5, chunk_size=3)
    # float64, sums of at most 2·V_T terms each below 25 in magnitude
    tol = 2 * V_T * 25 * 2.3e-16
    assert torch.allclose(cached, full, rtol=0, atol=tol)
    (g_full,), (g_cached,) = (torch.autograd.grad(r.sum(), zs) for r in (full, cached))
    assert torch.allclose(g_cached, g_full, rtol=0, atol=tol)


def test_distill_loss_takes_a_topk_teacher_through_every_position_mode_but_chunk_mean():
    al = make_alignment(GROUPS)
    zs, zt = batch_logits(al)
    lp = torch.log_softmax(zt / 1.5, -1)
    nxt = torch.zeros(zt.shape[:2], dtype=torch.float64)
    nxt[:, :-1] = lp[:, :-1].gather(-1, al.teacher_ids[:, 1:, None])[..., 0]
    td = topk_teacher(zt, V_T, 1.5, next_log_prob=nxt)
    for position in ("boundary", "chain"):
        crit = DistillLoss(TeacherTerm(tiny_w(), loss="pkl"), position=position, temperature=1.5, kd_weight=1.0)
        a, b = crit(zs, zt, al)[0], crit(zs, td, al)[0]
        assert float(b) == pytest.approx(float(a), rel=1e-12)
    with pytest.raises(XtokError, match="chunk_mean"):
        DistillLoss(TeacherTerm(tiny_w()), position="chunk_mean", temperature=1.5)(zs, td, al)
    with pytest.raises(XtokError, match="temperature 1.5"):
        DistillLoss(TeacherTerm(tiny_w()), temperature=1.0)(zs, td, al)
    # NeMo-RL's teacher top-k knob is reachable from DistillLoss
    rows = aligned_rows(zs, zt, al)
    crit = DistillLoss(TeacherTerm(tiny_w(), topk=2), kd_weight=1.0, ce_weight=0.0)
    assert float(crit(zs, zt, al)[0]) == pytest.approx(float(pkl_loss(rows.student, rows.teacher, tiny_w(),
                                                                            teacher_topk=2)), rel=1e-12)


@pytest.fixture(scope="module")
def smollm2_rows():
    """Real teacher rows: SmolLM2-135M-Instruct's logits (float64) at every position of two short texts."""
    from xtok_core.models import load_model

    smol = load_model("smollm2-135m-instruct")
    texts = ["The capital of France is Paris, and the capital of Italy is Rome.",
             "def add(a, b):\n    return a + b  # 2 + 3 = 5"]
    rows = []
    with torch.no_grad():
        for t in texts:
            ids = torch.as_tensor(smol.tok.encode(t).ids)[None]
            rows.append(smol.model(input_ids=ids).logits[0].double())
    return smol, torch.cat(rows)


def test_small_k_from_the_real_smollm2_teacher_stays_within_the_tail_mass_bounds(smollm2_rows, projection):
    """With K = 16 of SmolLM2's 49,152 ids, each loss moves by no more than its stated bound (docstrings)."""
    from xtok_core.losses.projected import EPS

    smol, zt = smollm2_rows
    v_t = zt.shape[-1]
    W = projection("gpt2", smol.tok, teacher_vocab_size=v_t)
    sw = as_sparse_w(W)
    g = torch.Generator().manual_seed(31)
    zs = torch.randn(len(zt), W.shape[0], generator=g, dtype=torch.float64) * 2
    k = 16
    td = topk_teacher(zt, k)
    r = td.log_tail.exp()
    assert float(r.median()) > 1e-2  # the tail matters: the bounds below are not vacuous
    p_k = td.log_probs[:, -1].exp()
    kept = torch.zeros(zt.shape, dtype=torch.bool).scatter_(1, td.ids, True)
    slack = 1e-9
    # P-KL: 0 <= full - top-K <= r log(p_K d / (r (min_rest q + eps)))
    q = torch.sparse.mm(sw.matrix_t(dtype=torch.float64), torch.softmax(zs, -1).T).T
    d = (q * ~kept).sum(-1) + (~kept).sum(-1) * EPS
    q_min = q.masked_fill(kept, torch.inf).min(-1).values
    diff = rows_of("pkl", zs, zt, W) - rows_of("pkl", zs, td, W)
    assert bool((diff >= -slack).all()) and bool((diff <= r * torch.log(p_k * d / (r * (q_min + EPS))) + slack).all())
    assert float(diff.max()) > 1e-4  # the two do differ
    ps = torch.softmax(zs, -1)
    for kind in ("hkl", "gold"):
        common = sw.common_set("top1" if kind == "hkl" else "exact", 0.6)
        lost = ~kept[:, common.teacher]  # common pairs whose teacher id is not kept
        ps_lost = ps[:, common.student].masked_fill(~lost, 0.0)
        m = torch.minimum(p_k, r)
        ps_min = ps[:, common.student].masked_fill(~lost, torch.inf).min(-1).values
        upper = r * (1 + torch.clamp(torch.log(m / ps_min) - 1, min=0))
        diff = rows_of(kind, zs, zt, W) - rows_of(kind, zs, td, W)
        assert bool((diff >= -ps_lost.sum(-1) - r - slack).all()) and bool((diff <= upper + slack).all()), kind
    common = sw.common_set("exact")
    w = len(common.teacher) / v_t
    lost = ~kept[:, common.teacher]
    ps_lost = ps[:, common.student].masked_fill(~lost, 0.0).sum(-1)
    diff = rows_of("gold-trl", zs, zt, W) - rows_of("gold-trl", zs, td, W)
    ln2 = math.log(2.0)
    assert bool((diff >= -w * 0.5 * ln2 * ps_lost - (1 - w) * r - slack).all())
    assert bool((diff <= w * 0.5 * ln2 * r + (1 - w) * r + slack).all())
    diff = rows_of("uld", zs, zt, W) - rows_of("uld", zs, td, W)
    assert bool((diff.abs() <= r + slack).all())


@pytest.mark.parametrize("kind", ["pkl", "hkl", "gold", "gold-trl", "uld", "kl"])
def test_small_k_teacher_gradients_match_finite_differences_and_the_naive_path(kind):
    """K = 3 of 9: the tail terms' gradients (P-KL's written by hand) against gradcheck and autograd's naive path."""
    g = torch.Generator().manual_seed(32)
    v_s = V_T if kind == "kl" else V_S
    W = identity_w(V_T).to(torch.float64) if kind == "kl" else tiny_w()
    zs = (torch.randn(7, v_s, generator=g, dtype=torch.float64) * 2).requires_grad_()
    off = (-torch.rand(7, generator=g, dtype=torch.float64)).requires_grad_()
    td = topk_teacher(torch.randn(7, V_T, generator=g, dtype=torch.float64) * 2, 3, 1.3)
    assert float(td.log_tail.exp().min()) > 0.05
    kw = dict(temperature=1.3, student_log_offset=off)
    assert torch.autograd.gradcheck(lambda z, o: rows_of(kind, z, td, W, chunk_size=3, **{**kw, "student_log_offset": o}),
                                    (zs, off), nondet_tol=NONDET, fast_mode=True)
    fast = rows_of(kind, zs, td, W, chunk_size=3, **kw)
    ref = rows_of(kind, zs, td, W, naive=True, **kw)
    w = torch.rand(7, generator=g, dtype=torch.float64)
    grads = [torch.autograd.grad(r @ w, (zs, off)) for r in (fast, ref)]
    assert torch.allclose(fast, ref, rtol=0, atol=1e-12)
    for a, b in zip(*grads):
        assert torch.allclose(a, b, rtol=0, atol=1e-12)


def test_learned_w_gradient_with_a_small_k_teacher_equals_naive():
    g = torch.Generator().manual_seed(33)
    sw = as_sparse_w(tiny_w(torch.float32))
    values = (sw.values + 0.1 * torch.rand(11, generator=g)).requires_grad_()
    zs = torch.randn(13, V_S, generator=g).requires_grad_()
    td = topk_teacher(torch.randn(13, V_T, generator=g) * 2, 4)
    grads = []
    for kw in ({"chunk_size": 4}, {"naive": True}):
        rows, _ = pkl_rows(zs, td, sw, values=values, **kw)
        grads.append(torch.autograd.grad(rows.mean(), [zs, values]))
    for a, b in zip(*grads):
        assert float((a - b).abs().max()) < f32_tol(V_T * 4)  # fp32 sums over V_T teacher and 4 tail terms


def test_the_columns_of_w_in_both_layouts_are_ws_own_columns(projection):
    W = projection("gpt2", "qwen2.5")
    sw = as_sparse_w(W)
    cols = torch.unique(torch.randint(0, W.shape[1], (300,), generator=torch.Generator().manual_seed(41)))
    want = W.matrix[:, cols.numpy()].toarray()  # scipy: W's own columns
    for layout in (torch.sparse_coo, torch.sparse_csr):
        w, w_t = sw.columns(cols, dtype=torch.float64, layout=layout)
        assert w.layout == w_t.layout == layout and w.shape == (W.shape[0], len(cols))
        assert np.array_equal(w.to_dense().numpy(), want.astype(np.float64))
        assert np.array_equal(w_t.to_dense().numpy(), want.T.astype(np.float64))
    rowsum = sw.row_sums(dtype=torch.float64)
    assert torch.allclose(rowsum, torch.ones_like(rowsum), rtol=0, atol=W.shape[1] * 1.2e-7)  # rows of W sum to 1


def test_pkl_on_the_kept_columns_alone_equals_the_dense_path_on_the_real_teacher(smollm2_rows, projection):
    """The top-K P-KL kernel works on the union of kept ids; the naive path on every teacher column."""
    smol, zt = smollm2_rows
    W = projection("gpt2", smol.tok, teacher_vocab_size=zt.shape[-1])
    g = torch.Generator().manual_seed(42)
    zs = (torch.randn(len(zt), W.shape[0], generator=g, dtype=torch.float64) * 2).requires_grad_()
    off = (-torch.rand(len(zt), generator=g, dtype=torch.float64)).requires_grad_()
    w = torch.rand(len(zt), generator=g, dtype=torch.float64)
    for k in (16, 256):
        td = topk_teacher(zt, k)
        fast = rows_of("pkl", zs, td, W, chunk_size=7, student_log_offset=off)
        ref = rows_of("pkl", zs, td, W, naive=True, student_log_offset=off)
        # fp64 sums over V_t columns: rounding ~ V_t · 2.2e-16 relative to the row's size
        tol = zt.shape[-1] * 2.3e-16 * 8
        assert torch.allclose(fast, ref, rtol=tol, atol=tol), float((fast - ref).abs().max())
        for a, b in zip(torch.autograd.grad(fast @ w, (zs, off)), torch.autograd.grad(ref @ w, (zs, off))):
            assert torch.allclose(a, b, rtol=tol, atol=tol), float((a - b).abs().max())
