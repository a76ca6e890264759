"""QP layer and moment layer: bilevel vs cvxpylayers (and qpth), forward + backward.

.. math:: x^*(c, h) = \\arg\\min_x \\tfrac12 x^\\top Q x + c^\\top x \\ \\text{ s.t. } G x \\le h
          \\qquad
          z^*(\\xi) = \\arg\\min_z \\|z - \\xi\\|^2 \\ \\text{ s.t. } D z = \\beta

- *QP layer* (OptNet's setting without equalities): n = 20 variables, m = 40 random
  inequalities, ``Q = B^T B + I`` (fixed), batches of ``c`` and ``h`` (both
  differentiable), ``h`` drawn so that about a quarter of the constraints are active.
  Ours: ``bl.torch.Layer(bl.problems.QP(Q, G), "analytic")`` (Goldfarb-Idnani in numba,
  closed-form active-set VJP). cvxpylayers: ``CvxpyLayer`` of
  ``0.5 quad_form(x, Q) + c @ x`` s.t. ``G x <= h`` with parameters ``c, h`` and its
  default solver arguments. qpth (if it imports): ``QPFunction(eps=1e-12, verbose=-1)``
  with empty equality constraints.
- *moment layer* (the paper's section 3.2): the projection onto the moment conditions of a
  4-point stencil, ``l = 0``, accuracy ``r = 3`` (one free direction) and ``r = 4`` (the
  paper's, a single point), batches of ``xi``. Ours:
  ``bl.torch.Layer(bl.problems.EqualityConstrainedLS(D, beta), "analytic")``;
  cvxpylayers: ``sum_squares(z - xi)`` s.t. ``D z == beta``, parameter ``xi``.

Timings: median time per batch of forward + backward (``torch.autograd.grad`` of
``<y, w>`` with a fixed random ``w``), all in float64, in one process on the same batches;
the implementations are timed in turn within each repeat (the same machine load for all).

Checks (exit status 1 when one fails): our QP solutions satisfy the KKT conditions to 1e-9
(relative) and agree with cvxpylayers' to 1e-3 (relative to ``max|x|``: its conic solver's
default accuracy) and with qpth's to 1e-5; our gradients equal the generic constrained
``Implicit`` (a dense KKT solve through torch autograd) on 4 rows to 1e-9, and
float64 central finite differences on 2 rows to 1e-6 (relative to ``max(1, max|g|)``);
cvxpylayers' gradient is printed (relative difference; its default solver accuracy leaves
~1e-1, a set-up error only above 1); the moment layer's output satisfies ``D z = beta`` to
1e-12 and equals cvxpylayers' to 1e-4 (relative). Speed goal (printed, not enforced):
cvxpylayers / ours >= 20 per batch, forward + backward.

``--quick``: batch 8, one repeat, no qpth, the moment layer with r = 3 only. Run:
``python benchmarks/bench_qp_moment.py [--quick] [--repeat K] [--batch B]``.
"""

from __future__ import annotations

import os
import sys
import warnings

import numpy as np
from _harness import make_parser, print_table, time_interleaved

PEERS = ("cvxpylayers",)
N, M = 20, 40
BATCH = 64
MOMENT_BATCHES = (1, 100, 1000)
SPEEDUP_GOAL = 20.0
KKT_TOL = 1e-9
CVX_QP_RTOL = 1e-3       # cvxpylayers vs ours (its default solver accuracy), else exit 1
QPTH_RTOL = 1e-5
GRAD_TOL = 1e-9          # ours vs the generic Implicit on the same rows
FD_TOL = 1e-6           # ours vs float64 central finite differences on 2 rows, relative
                         # to max(1, max|g|): round-off / step ~ 1e-16 / 1e-5 times cond
CVX_GRAD_RTOL = 1.0      # cvxpylayers' gradient vs ours: a set-up error above this
                         # (its default solver accuracy leaves gradient errors ~1e-1)
MOMENT_RTOL = 1e-4


def qp_data(rng, batch):
    B = rng.standard_normal((N, N))
    Q = B.T @ B + np.eye(N)
    G = rng.standard_normal((M, N))
    C = rng.standard_normal((batch, N)) * 3
    # h so that about a quarter of the rows bind at the unconstrained minimizer's image
    X0 = -np.linalg.solve(Q, C.T).T
    Hs = X0 @ G.T + rng.uniform(-0.5, 1.5, (batch, M))
    return Q, G, C, Hs


def fwd_bwd(layer, inputs, w):
    import torch

    def run():
        leaves = [t.detach().clone().requires_grad_() for t in inputs]
        y = layer(*leaves)
        y = y[0] if isinstance(y, tuple) else y
        return y.detach(), torch.autograd.grad((y * w).sum(), leaves)

    return run


def main(argv=None):
    """Run the benchmark; return the exit status."""
    parser = make_parser(__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=BATCH, help=f"QP batch (default {BATCH})")
    args = parser.parse_args(argv)
    quick = args.quick
    repeat = args.repeat or (1 if quick else 7)
    batch = 8 if quick else args.batch

    import cvxpy as cp
    import torch
    from cvxpylayers.torch import CvxpyLayer

    import bilevel as bl
    from bilevel.solvers.qp import warmup

    torch.set_default_dtype(torch.float64)
    warmup()           # compiles (or loads from the cache) the QP/NNLS kernels, untimed
    print("QP and moment layers: bilevel vs cvxpylayers" + ("" if quick else " and qpth"))
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}; torch threads "
          f"{torch.get_num_threads()}; float64")
    failures = []
    rng = np.random.default_rng(0)
    rows = []

    # ---- QP layer ------------------------------------------------------------------------
    Q, G, C, H = qp_data(rng, batch)
    prob = bl.problems.QP(Q, G)
    ours = bl.torch.Layer(prob, "analytic")
    x = cp.Variable(N)
    c_p, h_p = cp.Parameter(N), cp.Parameter(M)
    cvx = CvxpyLayer(cp.Problem(cp.Minimize(0.5 * cp.quad_form(x, Q) + c_p @ x), [G @ x <= h_p]),
                     parameters=[c_p, h_p], variables=[x])
    Ct, Ht = torch.tensor(C), torch.tensor(H)
    w = torch.tensor(rng.standard_normal((batch, N)))
    impls = {"ours": fwd_bwd(ours, (Ct, Ht), w), "cvxpylayers": fwd_bwd(cvx, (Ct, Ht), w)}
    if not quick:
        try:
            from qpth.qp import QPFunction

            Qt, Gt, e = torch.tensor(Q), torch.tensor(G), torch.empty(0)

            def qpth_layer(c, h):
                return QPFunction(eps=1e-12, verbose=-1)(Qt, c, Gt, h, e, e)

            impls["qpth"] = fwd_bwd(qpth_layer, (Ct, Ht), w)
            impls["qpth"]()
        except Exception as exc:      # qpth does not support every torch version
            print(f"qpth skipped: {type(exc).__name__}: {str(exc)[:120]}")
            impls.pop("qpth", None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        results = {name: fn() for name, fn in impls.items()}
    X, (gC, gH) = results["ours"]
    X = X.numpy()
    lam_rows = [prob.solve((C[b], H[b])) for b in range(batch)]
    kkt = max(s.info["residual"] for s in lam_rows)
    active = np.mean([s.info["active"].size for s in lam_rows])
    print(f"\nQP n = {N}, m = {M}, batch {batch}: {active:.1f} active constraints per row on "
          f"average; our max KKT residual {kkt:.1e}")
    if not kkt <= KKT_TOL:
        failures.append(f"QP: our KKT residual {kkt:.1e} > {KKT_TOL}")
    implicit = bl.strategies.Implicit()
    for b in range(min(4, batch)):
        gi = implicit.vjp(prob, lam_rows[b], w[b].numpy())[0]
        err = max(np.abs(gi[0] - gC[b].numpy()).max(), np.abs(gi[1] - gH[b].numpy()).max())
        if not err <= GRAD_TOL:
            failures.append(f"QP row {b}: analytic vs generic implicit differ by {err:.1e}")
    # order 2, step 1e-5 relative: the default order-4 step (7e-4 |h_i|) can straddle a
    # kink where a slack or multiplier is below ~1e-2; x* is piecewise affine, so the
    # error is round-off / step ~ 1e-16 / 1e-5 times the conditioning
    fd = bl.strategies.FiniteDifference(order=2, rel_step=1e-5)
    fd_err = 0.0
    for b in range(min(2, batch)):
        gf = fd.vjp(prob, lam_rows[b], w[b].numpy())[0]
        gscale = max(1.0, np.abs(gC[b].numpy()).max(), np.abs(gH[b].numpy()).max())
        fd_err = max(fd_err, np.abs(gf[0] - gC[b].numpy()).max() / gscale,
                     np.abs(gf[1] - gH[b].numpy()).max() / gscale)
    print(f"  ours: gradient vs float64 central finite differences (2 rows), relative to "
          f"max(1, max|g|): {fd_err:.1e}")
    if not fd_err <= FD_TOL:
        failures.append(f"QP: our gradient differs from finite differences by {fd_err:.1e}")
    scale = np.abs(X).max()
    for name, (Y, grads) in results.items():
        if name == "ours":
            continue
        dx = np.abs(Y.numpy() - X).max() / scale
        dg = max(np.abs(g.numpy() - o.numpy()).max() / max(np.abs(o.numpy()).max(), 1e-300)
                 for g, o in zip(grads, (gC, gH)))
        print(f"  {name}: max|x - x_ours|/max|x| = {dx:.1e}, gradient relative difference "
              f"{dg:.1e}")
        tol = CVX_QP_RTOL if name == "cvxpylayers" else QPTH_RTOL
        if not dx <= tol:
            failures.append(f"QP: {name}'s solution differs from ours by {dx:.1e} > {tol}")
        if name == "cvxpylayers" and not dg <= CVX_GRAD_RTOL:
            failures.append(f"QP: cvxpylayers' gradient differs from ours by {dg:.1e}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t = time_interleaved(impls, repeat=repeat, number={"ours": 1 if quick else 10})
    rows.append((f"QP n={N} m={M}, batch {batch}", t))
    qp_columns = ["ours", "cvxpylayers"] + (["qpth"] if "qpth" in impls else [])

    # ---- moment layer --------------------------------------------------------------------
    dx_grid = 10 / 199
    offsets = np.array([-2, -1, 1, 2]) * dx_grid
    moment_rows = []
    speedups = [t["cvxpylayers"].median / t["ours"].median]
    for r in ((3,) if quick else (3, 4)):
        D, beta = bl.problems.moment_matrix(offsets, 0, r)
        mprob = bl.problems.EqualityConstrainedLS(D, beta)
        ours_m = bl.torch.Layer(mprob, "analytic")
        z = cp.Variable(4)
        xi_p = cp.Parameter(4)
        cvx_m = CvxpyLayer(cp.Problem(cp.Minimize(cp.sum_squares(z - xi_p)), [D @ z == beta]),
                           parameters=[xi_p], variables=[z])
        for mb in (MOMENT_BATCHES[:2] if quick else MOMENT_BATCHES):
            Xi = torch.tensor(rng.standard_normal((mb, 4)))
            wm = torch.tensor(rng.standard_normal((mb, 4)))
            fo, fc = fwd_bwd(ours_m, (Xi,), wm), fwd_bwd(cvx_m, (Xi,), wm)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                (Zo, go), (Zc, gc) = fo(), fc()
            feas = np.abs(Zo.numpy() @ D.T - beta).max()
            dz = np.abs(Zo.numpy() - Zc.numpy()).max() / np.abs(Zo.numpy()).max()
            if not feas <= 1e-12 * max(1.0, np.abs(beta).max()) * 10:
                failures.append(f"moment r={r}: D z - beta = {feas:.1e}")
            if not dz <= MOMENT_RTOL:
                failures.append(f"moment r={r}, batch {mb}: cvxpylayers differs by {dz:.1e}")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                tm = time_interleaved({"ours": fo, "cvxpylayers": fc},
                                      repeat=repeat if mb < 1000 else min(repeat, 3),
                                      number={"ours": 1 if quick else 20})
            speedups.append(tm["cvxpylayers"].median / tm["ours"].median)
            moment_rows.append((f"moment s=4 r={r}, batch {mb}", tm))
            print(f"  moment r={r} batch {mb}: |D z - beta| {feas:.0e}, cvxpylayers rel. "
                  f"difference {dz:.0e}, gradient difference "
                  f"{np.abs(go[0].numpy() - gc[0].numpy()).max():.0e}")
    print()
    print_table("time per batch, forward + backward (ratio > 1: ours is faster)", rows,
                qp_columns)
    print()
    print_table("moment layer, time per batch, forward + backward", moment_rows,
                ["ours", "cvxpylayers"])
    ok = min(speedups) >= SPEEDUP_GOAL
    print(f"\n  cvxpylayers/ours: {min(speedups):.0f}x .. {max(speedups):.0f}x "
          f"(goal >= {SPEEDUP_GOAL:g}x: {'met' if ok else 'NOT met'})")
    if failures:
        print("FAILED:\n  " + "\n  ".join(failures), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
