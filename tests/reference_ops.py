"""Plain Theano references that the tests hold the network's C passes (multiscale.py)
against: the mean pooling and nearest upsampling of the multi-scale layer (Appendix D.2.1)."""
import theano.tensor as T


def mean_pool(x, factor):
    """Mean over factor x factor blocks of x (n, C, H, W) -> (n, C, H / factor, W / factor)."""
    if factor == 1:
        return x
    n, c, h, w = x.shape
    return x.reshape((n, c, h // factor, factor, w // factor, factor)).mean(axis=(3, 5))


def upsample_nearest(x, factor):
    """Each pixel of x (n, C, h, w) repeated into a factor x factor block."""
    if factor == 1:
        return x
    return T.repeat(T.repeat(x, factor, axis=2), factor, axis=3)
