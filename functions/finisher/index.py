"""SCF handler of the finisher function (handler: index.main_handler)."""

from typing import Any

from shared.entrypoints.scf import handle_finisher


def main_handler(event: dict[str, Any], context: object) -> dict[str, Any]:
    return handle_finisher(event, context)
