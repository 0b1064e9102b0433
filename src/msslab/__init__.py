"""msslab: config-driven music source separation experiments with recurrent networks."""

__version__ = "0.1.0"
