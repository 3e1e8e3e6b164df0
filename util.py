"""Small helpers of the math that several modules share: logit, nats per bit."""
import numpy as np


def logit(p, lib=np):
    """log(p / (1 - p)); pass lib=theano.tensor for symbolic p."""
    return lib.log(p) - lib.log1p(-p)


LOG2 = np.log(2.0)  # nats per bit
