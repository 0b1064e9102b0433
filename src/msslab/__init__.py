"""msslab: config-driven music source separation experiments with recurrent networks."""

__version__ = "0.1.0"

from .runs import register_resolvers as _register_resolvers

# Before any config is composed (apps and tests alike): hydra.run.dir uses ${msslab.uid:}.
_register_resolvers()
