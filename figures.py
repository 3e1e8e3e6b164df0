"""Figures a person can look at: the paper's Figure 1 layout for the Swiss roll,
heartbeat samples beside training sequences, training curves."""
import os

import matplotlib
matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

import model as M  # noqa: E402
import sampler  # noqa: E402


def swissroll_figure(exp, path, seed, n=2000):
    """Figure 1 layout: forward q(x^t) at t = 0, T/2, T (top), the learned reverse
    trajectory at the same t (middle), and the drift f_mu(x^t, t) - x^t (bottom)."""
    T_steps = exp.diffusion.T_steps
    times = [0, T_steps // 2, T_steps]
    rng = np.random.default_rng([seed, 7])
    x0 = exp.test_x[:n]
    A = np.concatenate([[1.0], np.cumprod(1 - exp.beta_values())])
    kernel = sampler.compile_reverse_kernel(exp.diffusion, 2)
    _, frames = sampler.sample_trajectory(exp.diffusion, kernel, x0.shape, rng, keep=times)
    fig, axes = plt.subplots(3, 3, figsize=(10, 10))
    grid = np.stack(np.meshgrid(np.linspace(-2.5, 2.5, 21), np.linspace(-2.5, 2.5, 21)), -1)
    grid = grid.reshape(-1, 2).astype('float32')
    for col, t in enumerate(times):
        forward = np.sqrt(A[t]) * x0 + np.sqrt(1 - A[t]) * rng.standard_normal(x0.shape)
        axes[0, col].scatter(*forward.T, s=1)
        axes[0, col].set_title('q(x^{}), t = {}'.format('t', t))
        axes[1, col].scatter(*frames[t].T, s=1, color='C1')
        axes[1, col].set_title('p(x^t), t = {}'.format(t))
        mu, _ = kernel(grid, np.full(len(grid), max(t, 1), dtype='int64'))
        axes[2, col].quiver(grid[:, 0], grid[:, 1], *(mu - grid).T, color='C2')
        axes[2, col].set_title('drift f_mu(x^t, t) - x^t, t = {}'.format(max(t, 1)))
    for ax in axes.flat:
        ax.set_xlim(-2.5, 2.5)
        ax.set_ylim(-2.5, 2.5)
        ax.set_aspect('equal')
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def heartbeat_figure(exp, path, seed, n=40):
    """Model samples beside training sequences, one sequence per row, black = 1."""
    rng = np.random.default_rng([seed, 7])
    kernel = sampler.compile_reverse_kernel(exp.diffusion, 2)
    samples, _ = sampler.sample_trajectory(exp.diffusion, kernel, (n, exp.train_x.shape[1]), rng)
    fig, axes = plt.subplots(1, 2, figsize=(8, 6))
    for ax, data, title in ((axes[0], exp.train_x[:n], 'training sequences'),
                            (axes[1], samples, 'model samples')):
        ax.imshow(data, cmap='gray_r', interpolation='nearest', aspect='auto')
        ax.set_title(title)
        ax.set_xlabel('bin')
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def schedule_figure(exp, path):
    """The forward schedule b_t over t (learned or fixed)."""
    beta = exp.beta_values()
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.semilogy(np.arange(1, len(beta) + 1), beta)
    ax.set_xlabel('t')
    ax.set_ylabel('b_t')
    ax.set_title('forward schedule')
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def experiment_figures(exp, run_dir, seed):
    """Every figure of the experiment, as PNG files in run_dir; returns their paths."""
    paths = []
    if exp.dataset == 'swissroll':
        paths.append(os.path.join(run_dir, 'swissroll_trajectories.png'))
        swissroll_figure(exp, paths[-1], seed)
    if exp.dataset == 'heartbeat':
        paths.append(os.path.join(run_dir, 'heartbeat_samples.png'))
        heartbeat_figure(exp, paths[-1], seed)
    if isinstance(exp.diffusion, M.GaussianDiffusion):
        paths.append(os.path.join(run_dir, 'schedule.png'))
        schedule_figure(exp, paths[-1])
    return paths


def compile_readout(diffusion, x_ndim):
    """A function (xt, t) -> (z_mu, z_Sigma) of the network read out at step t."""
    import theano
    import theano.tensor as T
    xt = T.TensorType(theano.config.floatX, (False,) * x_ndim)('xt')
    t = T.lvector('t')
    return theano.function([xt, t], list(diffusion.net(xt, t)))


def readout_figure(exp, path, readout_fn, n_steps=25, seed=0):
    """The temporal basis g_j(t) (top) and, for one held-out image carried to x^t by
    q(x^t | x^0), the read-out z^mu(t) and z^Sigma(t) = sum_j y_j(x^t) g_j(t): the median
    over pixels and channels, with the 10-90% range (Appendix D.2.1)."""
    T_steps = exp.diffusion.T_steps
    ts = np.unique(np.linspace(1, T_steps, n_steps).astype('int64'))
    rng = np.random.default_rng([seed, 9])
    x0 = exp.draw_inputs(rng, exp.test_x[:1])[0]
    A = np.cumprod(1 - exp.beta_values())[ts - 1].reshape(-1, 1, 1, 1)
    xt = np.sqrt(A) * x0 + np.sqrt(1 - A) * rng.standard_normal((len(ts),) + x0.shape[1:])
    z_mu, z_sigma = readout_fn(xt.astype(x0.dtype), ts)
    basis = exp.diffusion.net.basis
    fig, axes = plt.subplots(3, 1, figsize=(6, 8), sharex=True)
    axes[0].plot(np.arange(1, T_steps + 1), basis.T)
    axes[0].set_ylabel('g_j(t)')
    axes[0].set_title('temporal basis and read-out coefficients')
    for ax, z, name in ((axes[1], z_mu, 'z^mu'), (axes[2], z_sigma, 'z^Sigma')):
        lo, mid, hi = np.percentile(z.reshape(len(ts), -1), [10, 50, 90], axis=1)
        ax.fill_between(ts, lo, hi, alpha=0.3)
        ax.plot(ts, mid)
        ax.set_ylabel('{}(t), one image'.format(name))
    axes[2].set_xlabel('t')
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def heldout_figure(log, path, unit):
    """The monitored held-out bound K over training, with its standard error; False when
    the log holds no evaluation yet."""
    records = [r for r in log if 'heldout_K_bits' in r]
    if not records:
        return False
    it = np.array([r['iteration'] for r in records])
    k = np.array([r['heldout_K_bits'] for r in records])
    se = np.array([r['heldout_stderr_bits'] for r in records])
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.errorbar(it, k, yerr=se, marker='o', capsize=2)
    ax.set_xlabel('minibatches')
    ax.set_ylabel('held-out K ({})'.format(unit))
    ax.set_title('monitored bound (higher is better)')
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return True


def training_figures(exp, log, run_dir, compiled):
    """The figures that change during training, as PNG files in run_dir; returns their
    paths. compiled: a dict that keeps compiled functions between calls."""
    paths = []
    if isinstance(exp.diffusion, M.GaussianDiffusion):
        paths.append(os.path.join(run_dir, 'schedule.png'))
        schedule_figure(exp, paths[-1])
    if isinstance(getattr(exp.diffusion, 'net', None), M.TemporalReadout):
        if 'readout' not in compiled:
            compiled['readout'] = compile_readout(exp.diffusion, exp.train_x.ndim)
        paths.append(os.path.join(run_dir, 'readout.png'))
        readout_figure(exp, paths[-1], compiled['readout'], seed=exp.seed)
    path = os.path.join(run_dir, 'heldout_bound.png')
    if heldout_figure(log, path, exp.unit):
        paths.append(path)
    return paths
