"""A coordinator whose grid keeps a copy of every reply that reaches it (for tests that
check what crossed the wire), on Flower's real simulation engine."""

from flwr.app import Context, Message
from flwr.serverapp import Grid, ServerApp

from aidmp.config import RunConfig
from aidmp.server.federation import run_federation
from aidmp.simulations.runner import prepare, run_flower_simulation


class RecordingGrid:
    """The coordinator's real grid, keeping a copy of every reply that reaches it."""

    def __init__(self, grid: Grid, received: list[Message]) -> None:
        self._grid, self._received = grid, received

    def pull_messages(self, message_ids):
        replies = list(self._grid.pull_messages(message_ids))
        self._received.extend(replies)
        return replies

    def send_and_receive(self, messages, *, timeout=None):
        replies = list(self._grid.send_and_receive(messages, timeout=timeout))
        self._received.extend(replies)
        return replies

    def __getattr__(self, name):
        return getattr(self._grid, name)


def run_recorded(cfg: RunConfig, institutions: int, received: list[Message] | None) -> RunConfig:
    """Run the federation in simulation; replies land in `received` (if given)."""
    cfg = prepare(cfg, institutions)
    app = ServerApp()

    @app.main()
    def _main(grid: Grid, context: Context) -> None:
        grid = RecordingGrid(grid, received) if received is not None else grid
        run_federation(grid, cfg, run_id=str(context.run_id))

    run_flower_simulation(app, institutions, verbose=False)
    return cfg
