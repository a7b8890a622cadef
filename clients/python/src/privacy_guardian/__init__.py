"""Privacy Guardian for scientists: collect aggregate results from the share
servers and combine them on your machine with the endpoint's own plugin.

>>> from privacy_guardian import Guardian
>>> g = Guardian(servers=["https://s0.example.org", "https://s1.example.org"], token=TOKEN)
>>> colors = g.endpoint("colors")     # every server agrees; plugin checked and loaded
>>> colors.collect().result           # seal a batch, fetch every share, unshard
{'buckets': ['red', 'green', 'blue'], 'counts': [3, 12, 5]}
>>> colors.total().to_pandas()        # every released batch, as a DataFrame

Modules: ``client`` (Guardian, Endpoint and the checks), ``_http`` (requests,
retries, error answers), ``_plugin`` (wasmtime: compiling once, running
``configure`` and ``unshard``), ``frames`` (pandas shapes), ``errors``.
"""

from ._http import RetryPolicy
from .client import Collected, Endpoint, EndpointInfo, Guardian, History, canonical_params, config_hash
from .errors import DisagreementError, GuardianError, PluginError, ServerError, UsageError

__all__ = [
    "Collected",
    "DisagreementError",
    "Endpoint",
    "EndpointInfo",
    "Guardian",
    "GuardianError",
    "History",
    "PluginError",
    "RetryPolicy",
    "ServerError",
    "UsageError",
    "canonical_params",
    "config_hash",
]

__version__ = "0.1.0"
