"""Learning over many instances: serial, a spawned process pool and a Dask LocalCluster agree.

The executor changes where each instance's solve and VJP run, not what is computed: every
instance runs the same code on the same (pickled, bit-exact) inputs with one thread, and
the sum is taken in the caller in instance order. So results are compared bitwise.
"""

import numpy as np
import pytest
from sklearn.model_selection import KFold

import bilevel as bl
from bilevel.parallel import limit_threads, process_pool


def cv_folds(n_folds=5, seed=0):
    """A Lasso cross-validation: (train problem, validation loss) per fold."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((120, 15))
    w = np.zeros(15)
    w[:4] = [2.0, -1.5, 1.0, 0.5]
    y = X @ w + 0.3 * rng.standard_normal(120)
    folds = []
    for train, val in KFold(n_folds, shuffle=True, random_state=seed).split(X):
        folds.append((bl.problems.Lasso(X[train], y[train]),
                      bl.losses.SquaredError(X[val], y[val])))
    return folds


LAM = 0.05


def assert_identical(a, b):
    assert a[0] == b[0]
    np.testing.assert_array_equal(np.asarray(a[1]), np.asarray(b[1]))


def test_instance_sum_is_the_mean_of_the_instances():
    folds = cv_folds()
    value, grad = bl.hypergradient(bl.InstanceSum(folds), None, LAM, "partial_smoothness")
    each = [bl.hypergradient(p, loss, LAM, "partial_smoothness") for p, loss in folds]
    # Same numbers summed in the same order with weights 1/5: equal to round-off only
    # (w*a + w*b vs mean), so 1e-14 relative.
    assert value == pytest.approx(np.mean([v for v, _ in each]), rel=1e-14)
    assert float(grad) == pytest.approx(np.mean([float(g) for _, g in each]), rel=1e-14)
    # Independent reference: fourth-order finite differences of each fold's x*
    # (error O(h^4) plus solver noise, 1e-7 relative is ample on this support).
    fd = bl.hypergradient(bl.InstanceSum(folds), None, LAM,
                          bl.strategies.FiniteDifference(order=4))[1]
    assert float(grad) == pytest.approx(float(fd), rel=1e-7)


def test_weights_and_bad_arguments():
    folds = cv_folds(n_folds=2)
    total = bl.InstanceSum(folds, weights=[1.0, 0.0])
    value, grad = bl.hypergradient(total, None, LAM, "partial_smoothness")
    first = bl.hypergradient(*folds[0], LAM, "partial_smoothness")
    assert value == first[0] and float(grad) == float(first[1])
    with pytest.raises(ValueError, match="weights must be 2 finite numbers"):
        bl.InstanceSum(folds, weights=[1.0])
    with pytest.raises(ValueError, match="non-empty sequence of \\(problem, loss\\)"):
        bl.InstanceSum([])
    with pytest.raises(ValueError, match="loss, init and warm_start must be None"):
        bl.hypergradient(total, folds[0][1], LAM)
    with pytest.raises(TypeError, match="executor must have submit"):
        bl.hypergradient(total, None, LAM, executor=object())
    with pytest.raises(ValueError, match="executor applies to an InstanceSum"):
        bl.hypergradient(*folds[0], LAM, executor=object())


def test_limit_threads_restores():
    import numba
    import torch

    before = torch.get_num_threads(), numba.get_num_threads()
    with limit_threads(1):
        assert torch.get_num_threads() == 1 and numba.get_num_threads() == 1
    assert (torch.get_num_threads(), numba.get_num_threads()) == before
    with pytest.raises(ValueError, match="threads must be >= 1"), limit_threads(0):
        pass


def test_spawned_process_pool_is_bitwise_serial():
    total = bl.InstanceSum(cv_folds())
    serial = bl.hypergradient(total, None, LAM, "partial_smoothness")
    with process_pool(max_workers=2) as pool:
        pooled = bl.hypergradient(total, None, LAM, "partial_smoothness", executor=pool)
    assert_identical(serial, pooled)


@pytest.fixture(scope="module")
def client():
    distributed = pytest.importorskip("distributed")
    # Two worker processes of one thread on the loopback interface; the scheduler's HTTP
    # server on a free port (":0"), so that two clusters at once (xdist workers) do not
    # both ask for 8787 (dashboard_address=None still takes it, with a warning).
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                       host="127.0.0.1", dashboard_address=":0")
    client = distributed.Client(cluster)
    yield client
    client.close()
    cluster.close()


def test_dask_cluster_is_bitwise_serial(client):
    total = bl.InstanceSum(cv_folds())
    serial = bl.hypergradient(total, None, LAM, "fixed_point", return_info=True)
    remote = bl.hypergradient(total, None, LAM, "fixed_point", executor=client,
                              return_info=True)
    assert_identical(serial, remote)
    assert serial[2]["n_iter"] == remote[2]["n_iter"]
    via_executor = bl.hypergradient(total, None, LAM, "fixed_point",
                                    executor=client.get_executor())
    assert_identical(serial, via_executor)
    # A sweep over a grid: every (theta, fold) at once, each sum bitwise the serial one.
    grid = [0.02, LAM, 0.1]
    swept = bl.parallel.sweep(total, grid, "fixed_point", executor=client)
    for lam, remote_point in zip(grid, swept):
        assert_identical(bl.hypergradient(total, None, lam, "fixed_point"), remote_point)
    # The work did run on both workers' processes, not here.
    assert len(client.scheduler_info()["workers"]) == 2


def test_minimize_over_instances_on_dask_is_bitwise_serial(client):
    total = bl.InstanceSum(cv_folds())
    kwargs = dict(strategy="partial_smoothness", optimizer="lbfgs", steps=3, log_scale=True,
                  progress=False)
    serial = bl.minimize(total, None, LAM, **kwargs)
    remote = bl.minimize(total, None, LAM, executor=client, **kwargs)
    assert serial.history["loss"] == remote.history["loss"]
    assert serial.loss == remote.loss and float(serial.theta) == float(remote.theta)
    assert serial.loss < serial.history["loss"][0]


def test_compare_over_instances_on_dask_matches_the_serial_rows(client):
    total = bl.InstanceSum(cv_folds(n_folds=3))
    strategies = ["partial_smoothness", "fixed_point", "implicit"]
    serial = bl.compare(total, None, LAM, strategies, repeat=1)
    remote = bl.compare(total, None, LAM, strategies, repeat=1, executor=client)
    # The reference is the mean of each fold's fourth-order finite differences; the rows
    # are the summed hypergradients, bitwise the serial ones wherever they ran.
    fd = bl.hypergradient(total, None, LAM, bl.strategies.FiniteDifference(order=4))[1]
    assert remote.reference_grad == serial.reference_grad == [float(fd)]
    for a, b in zip(serial.rows, remote.rows):
        assert a["strategy"] == b["strategy"]
        if "skipped" in a:      # implicit: the Lasso has no smooth optimality residual
            assert "skipped" in b and a["missing"] == b["missing"]
            continue
        assert a["grad"] == b["grad"] and a["iterations"] == b["iterations"]
        assert b["error"] < 1e-7      # O(h^4) differences and solver noise on this support
    assert [r["strategy"] for r in serial.rows if "skipped" in r] == ["implicit"]
    assert "3 instances of lasso" in str(remote) and "skipped: needs" in str(remote)
    with pytest.raises(ValueError, match="budgets"):
        bl.compare(total, None, LAM, strategies, budgets=[1, 2])
    with pytest.raises(ValueError, match="executor applies to an InstanceSum"):
        bl.compare(*cv_folds(n_folds=2)[0], LAM, executor=client)
