"""The one scorer (:func:`inference.make_scorer`) with the nuisance prior as given (absolute
background, ``background_relative=False``): the form the numeric tests compare against exact
integrals and against each other."""

from inference import ScorerConfig, make_scorer


def make_linear_scorer(noise, prior, **kw):
    """``score(counts, images, exposure, shift=None)`` of ``ScorerConfig(kind="linear")``."""
    return make_scorer(ScorerConfig("linear", noise, prior, background_relative=False, **kw)).score


def make_laplace_scorer(noise, prior, **kw):
    """``score(counts, images, exposure, shift=None)`` of ``ScorerConfig(kind="laplace")``."""
    return make_scorer(ScorerConfig("laplace", noise, prior, background_relative=False, **kw)).score


def make_fast_scorer(noise, prior, *, bin_factor=4, **kw):
    """``score(counts, images, exposure, shift=None)`` of ``ScorerConfig(kind="fast")``."""
    return make_scorer(ScorerConfig("fast", noise, prior, background_relative=False, bin_factor=bin_factor, **kw)).score
