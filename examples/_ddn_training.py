"""Training and scoring shared by the Deep Declarative Networks examples.

``ddn_point_clouds.py`` and ``ddn_projections.py`` train small classifiers with SGD and
momentum under a step learning-rate schedule (Gould et al., "Deep Declarative Networks",
TPAMI 2021, Sec. 5), count the layers' ``DegeneracyWarning`` instead of raising it, and
score top-1 accuracy and mean average precision.
"""

import contextlib
import functools
import sys
import time
import warnings

import numpy as np
import torch

import bilevel as bl


@contextlib.contextmanager
def kinks_counted(counter):
    """Count the layer's DegeneracyWarnings in ``counter["kinks"]`` instead of raising them.

    Float32 training data puts an input within 1e-6 (relative) of a kink of the layer now
    and then; there the layer returns one one-sided derivative, which is all SGD needs,
    and warns. Other warnings are left to the caller's filters.
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", bl.DegeneracyWarning)
        yield
    for w in caught:
        if issubclass(w.category, bl.DegeneracyWarning):
            counter["kinks"] = counter.get("kinks", 0) + 1
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)


def one_torch_thread(main):
    """Run ``main`` on one torch thread, restoring the count after.

    The models are small: on a busy machine torch's spinning worker threads slow an epoch
    down up to fortyfold.
    """
    @functools.wraps(main)
    def wrapped(*args, **kwargs):
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return main(*args, **kwargs)
        finally:
            torch.set_num_threads(threads)
    return wrapped


def train(model, X, y, epochs, seed, *, lr, gamma, weight_decay=0.0, batch, label="",
          quiet=False, counter=None):
    """SGD with momentum 0.9; the learning rate times ``gamma`` every third of the epochs.

    Progress: a tqdm bar over epochs on a terminal, else a line per epoch on stderr.
    """
    counter = {} if counter is None else counter
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=max(1, epochs // 3), gamma=gamma)
    Xt, yt = torch.from_numpy(X), torch.from_numpy(y)
    tty = sys.stderr.isatty() and not quiet
    if tty:
        from tqdm import tqdm

        bar = tqdm(range(epochs), desc=label, leave=False, file=sys.stderr)
    else:
        bar = range(epochs)
    with kinks_counted(counter):
        for epoch in bar:
            start = time.perf_counter()
            model.train()
            perm = torch.randperm(len(Xt), generator=gen)
            total = 0.0
            for i in range(0, len(Xt) - 1, batch):      # no batch of one for batch norm
                idx = perm[i:i + batch]
                loss = torch.nn.functional.cross_entropy(model(Xt[idx]), yt[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
                total += loss.item() * len(idx)
            sched.step()
            if not quiet and not tty:
                print(f"  {label} epoch {epoch + 1}/{epochs}: loss {total / len(Xt):.3f} "
                      f"({time.perf_counter() - start:.2f} s)", file=sys.stderr, flush=True)
    return model


def scores(model, X, y, counter=None, chunk=256):
    """``(top-1 accuracy, mAP)`` in percent of ``model`` on inputs ``X``, labels ``y``."""
    from sklearn.metrics import average_precision_score

    counter = {} if counter is None else counter
    model.eval()
    with torch.no_grad(), kinks_counted(counter):
        logits = torch.cat([model(torch.from_numpy(X[i:i + chunk]))
                            for i in range(0, len(X), chunk)])
    p = torch.softmax(logits.double(), dim=-1).numpy()
    acc = 100.0 * float(np.mean(p.argmax(axis=1) == y))
    onehot = np.eye(p.shape[1])[y]
    return acc, 100.0 * float(average_precision_score(onehot, p, average="macro"))
