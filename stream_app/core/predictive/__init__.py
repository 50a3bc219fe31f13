"""Predictive customer value: BG/NBD (will they buy again, how often) and Gamma-Gamma (how much).

Pure numerics, no I/O: the trainer fits (:func:`fit_bgnbd`, :func:`fit_gamma_gamma`, on a
sample from :func:`in_sample` / :func:`sample_indices`), publishes :meth:`Fit.to_json`, and
workers predict per customer with a :class:`Predictor` from a compact
:class:`PurchaseSummary` (:func:`record_purchase`, :func:`model_inputs`). Time is in days;
see docs/segmentation.md, "Predictive customer value".
"""

from .bgnbd import BgNbdParams, conditional_expected_purchases, expected_purchases, p_alive
from .fitting import (
    MIN_CUSTOMERS,
    MIN_GG_CUSTOMERS,
    MIN_REPEATERS,
    SAMPLE_SIZE,
    Fit,
    aggregate,
    fit_bgnbd,
    fit_gamma_gamma,
    in_sample,
    sample_indices,
)
from .gamma_gamma import GammaGammaParams, conditional_expected_spend, population_mean_spend
from .predict import Prediction, Predictor
from .simulate import Population, simulate_bgnbd, simulate_gamma_gamma, to_days
from .summary import PurchaseSummary, model_inputs, record_purchase, utc_day

__all__ = [
    "MIN_CUSTOMERS", "MIN_GG_CUSTOMERS", "MIN_REPEATERS", "SAMPLE_SIZE",
    "BgNbdParams", "Fit", "GammaGammaParams", "Population", "Prediction", "Predictor",
    "PurchaseSummary", "aggregate", "conditional_expected_purchases",
    "conditional_expected_spend", "expected_purchases", "fit_bgnbd", "fit_gamma_gamma",
    "in_sample", "model_inputs", "p_alive", "population_mean_spend", "record_purchase",
    "sample_indices", "simulate_bgnbd", "simulate_gamma_gamma", "to_days", "utc_day",
]
