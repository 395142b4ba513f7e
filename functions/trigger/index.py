"""SCF handler of the trigger function (handler: index.main_handler)."""

from typing import Any

from shared.entrypoints.scf import handle_trigger


def main_handler(event: dict[str, Any], context: object) -> dict[str, Any]:
    return handle_trigger(event, context)
