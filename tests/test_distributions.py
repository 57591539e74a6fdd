"""Per-position distributions and losses (`xtok_core.distributions`) on the real SmolLM2 teacher and a tiny student."""

import numpy as np
import pytest
import torch

from xtok_core.losses import gold_loss, hkl_loss, pkl_loss, uld_loss

TEXT = "347 + 1286 = 1633. Paid $1,234.56 on 2024-03-15."


@pytest.fixture(scope="module")
def dist():
    from xtok_core import load_model
    from xtok_core.distributions import position_distributions

    teacher = load_model("smollm2-135m-instruct")
    student = load_model("tiny:llama-3.2")
    return student, teacher, position_distributions(TEXT, student, teacher)


@pytest.mark.slow
def test_each_position_is_a_boundary_pair_and_the_losses_are_the_loss_functions(dist):
    student, teacher, d = dist
    al = d.alignment
    assert d.positions and len(d.positions) <= len(al.groups) - 1
    for p in d.positions:
        g, nxt = al.groups[p.group], al.groups[p.group + 1]
        assert p.student_pos == g.student[-1] and p.teacher_pos == g.teacher[-1]
        assert al.group_span(nxt)[0] == al.group_span(g)[1]  # both predict the same next byte
    # the mean of the per-position values is each loss on all the rows at once
    with torch.no_grad():
        zs = student.model(input_ids=torch.as_tensor(al.student_ids[None].astype(np.int64))).logits[0].float()
        zt = teacher.model(input_ids=torch.as_tensor(al.teacher_ids[None].astype(np.int64))).logits[0].float()
    s_rows = zs[[p.student_pos for p in d.positions]]
    t_rows = zt[[p.teacher_pos for p in d.positions]]
    whole = {"pkl": pkl_loss(s_rows, t_rows, d.w), "hkl": hkl_loss(s_rows, t_rows, d.w),
             "gold": gold_loss(s_rows, t_rows, d.w), "uld": uld_loss(s_rows, t_rows)}
    n = len(d.positions)
    for name, value in whole.items():
        mean = sum(p.losses[name] for p in d.positions) / n
        # float32 sums over V ≈ 1.3e5 terms per row, then n rows
        assert mean == pytest.approx(float(value), rel=1.3e5 * 1.2e-7 * 4, abs=1e-5), name


@pytest.mark.slow
def test_projection_and_unreachable_mass_and_feeders(dist):
    student, teacher, d = dist
    m = d.w.matrix.tocsr()
    q = m.T.dot(d.student_probs.double().numpy().T).T
    assert np.allclose(q.sum(-1), 1.0, atol=1e-4)  # rows of W sum to 1: projection keeps the mass
    reached = np.diff(m.tocsc().indptr) > 0
    for n, p in enumerate(d.positions):
        assert p.unreachable_mass == pytest.approx(float(d.teacher_probs[n].double().numpy()[~reached].sum()), abs=1e-6)
        j, qj = p.projected_top[0]
        feeders = d.feeders(n, j, k=10_000)
        assert sum(c for _, _, c in feeders) == pytest.approx(qj, rel=1e-4)
        assert all(m[s, j] == wt for s, wt, _ in feeders[:5])
        assert [c for *_, c in feeders] == sorted((c for *_, c in feeders), reverse=True)
