"""SCF handler of the poller function (handler: index.main_handler)."""

from typing import Any

from shared.entrypoints.scf import handle_poller


def main_handler(event: dict[str, Any], context: object) -> dict[str, Any]:
    return handle_poller(event, context)
