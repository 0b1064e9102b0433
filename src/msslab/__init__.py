"""msslab: config-driven music source separation experiments with recurrent networks."""

__version__ = "0.1.0"

from pathlib import Path as _Path

#: The Hydra config groups. Written in the checkout's top-level ``conf/`` (``src/msslab/conf`` links
#: to it); a built wheel carries a copy at this place, so an installed msslab finds them too.
CONFIG_DIR = _Path(__file__).resolve().parent / "conf"

from .runs import register_resolvers as _register_resolvers

# Before any config is composed (apps and tests alike): hydra.run.dir uses ${msslab.uid:}.
_register_resolvers()
