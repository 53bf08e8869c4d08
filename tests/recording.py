"""A coordinator whose grid keeps a copy of every reply that reaches it (for tests that
check what crossed the wire), on Flower's real simulation engine or the in-process one."""

from flwr.app import Context, Message
from flwr.serverapp import Grid, ServerApp

from aidmp.config import RunConfig
from aidmp.server.federation import run_federation
from aidmp.simulations.inprocess import InProcessGrid
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


def run_recorded(
    cfg: RunConfig, institutions: int, received: list[Message] | None, engine: str = "ray"
) -> RunConfig:
    """Run the federation in simulation; replies land in `received` (if given).

    `engine="ray"`: Flower's simulation engine; `"inprocess"`: simulations/inprocess.py,
    the same ClientApp called in this process."""
    cfg = prepare(cfg, institutions)
    if engine == "inprocess":
        grid = InProcessGrid(institutions)
        recording = RecordingGrid(grid, received) if received is not None else grid
        run_federation(recording, cfg, run_id=str(grid.run.run_id))
        return cfg
    app = ServerApp()

    @app.main()
    def _main(grid: Grid, context: Context) -> None:
        grid = RecordingGrid(grid, received) if received is not None else grid
        run_federation(grid, cfg, run_id=str(context.run_id))

    run_flower_simulation(app, institutions, verbose=False)
    return cfg
