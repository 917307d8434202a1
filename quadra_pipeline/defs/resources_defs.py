"""Resources for the code location, chosen by QUADRA_ENV (see resources.resources_for)."""

import dagster as dg

from ..settings import load_settings
from .resources import resources_for


@dg.definitions
def resources() -> dg.Definitions:
    return dg.Definitions(resources=resources_for(load_settings()))
