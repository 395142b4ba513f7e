"""SCF handler of the trigger function. The package (scripts/build_package.py) ships this file
as trigger.py, so scf-trigger/serverless.yml names it `handler: trigger.main_handler`."""

import os
from typing import Any

# No pydantic plugins are used: skip pydantic's scan of every installed package's entry
# points on the first model build (a cold-start cost).
os.environ.setdefault("PYDANTIC_DISABLE_PLUGINS", "__all__")

from shared.entrypoints import coldstart

coldstart.pause()  # until the first invocation has built its context: see coldstart

from shared.entrypoints.scf import handle_trigger  # noqa: E402 (after the pause)


def main_handler(event: dict[str, Any], context: object) -> dict[str, Any]:
    return handle_trigger(event, context)
