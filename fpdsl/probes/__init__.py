"""Probes look at the model at a fixed cadence.

    observe(step, view) -> dict of scalars (logged as <probe name>/<quantity>)
    finish() -> ProbeResult (summary metrics, tags, figures, arrays)

`view` is a StepView: the current θ, the objective, and the network's output on the
dataset, computed once per step and shared by every probe.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from fpdsl.probes.condensation import Condensation
from fpdsl.probes.filtering import Filtering
from fpdsl.probes.ntk import NTK
from fpdsl.probes.projection import Projection
from fpdsl.probes.spectral_amplitude import SpectralAmplitude
from fpdsl.probes.spectrum import Spectrum


@dataclass
class ProbeResult:
    metrics: dict = field(default_factory=dict)
    tags: dict = field(default_factory=dict)
    figures: dict = field(default_factory=dict)
    arrays: dict = field(default_factory=dict)
    line: str = ""  # one line for the run's closing summary


class StepView:
    def __init__(self, objective, theta):
        self.objective = objective
        self.theta = theta

    @cached_property
    def output(self) -> np.ndarray:
        """h(x_j) on the dataset's inputs, (n, c) float64."""
        return self.objective.output(self.theta)

    @cached_property
    def params(self) -> dict:
        return {k: v.detach() for k, v in self.objective.unflatten(self.theta).items()}


__all__ = ["Condensation", "Filtering", "NTK", "ProbeResult", "Projection", "SpectralAmplitude", "Spectrum", "StepView"]
