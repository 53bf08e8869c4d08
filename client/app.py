"""The institution's Flower ClientApp (`[tool.flwr.app.components] clientapp`).

One handler per kind of message, each in its own module: train and evaluate
(client/train_handler.py), a statistics query (client/analytics_handler.py), a k-means
round (client/clustering_handler.py), an explanation (client/explain_handler.py), and
the decryption of a sum under HE (client/decrypt_handler.py). A node that cannot take
part declines with a Flower error reply (code >= 100) and a reason, never a crash.

Each handler imports its module when its message arrives: in deployment every message
starts a fresh `flwr-clientapp` process, so a query or a decryption should not pay for
torch and Opacus, which only training needs.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from aidmp.client.audit_trail import audit_mod
from aidmp.client.data import institution_name
from aidmp.client.decline import decline, decline_for
from aidmp.client.mods import client_dp_clipping_mod
from aidmp.errors import AidmpError, DeclineCode

log = logging.getLogger("aidmp.client")

# The audit mod is outermost: it records the exact bytes that leave, after every other
# mod (such as client-level DP clipping) has had its say.
app = ClientApp(mods=[audit_mod, client_dp_clipping_mod])


def _decline_on_error(handler: Callable[[Message, Context], Message]):
    """Turn a problem the node can name into an error reply the coordinator can log.

    The reason starts with the node's name in brackets, so the coordinator can say
    which institution declined even if it never heard from it before. It carries no
    input, file contents or local paths (client/decline.py); the full message is logged.
    """

    def wrapped(msg: Message, context: Context) -> Message:
        name = institution_name(context.node_config, context.node_id)
        try:
            return handler(msg, context)
        except AidmpError as exc:  # a round config it cannot read is one (RoundConfigError)
            return decline_for(msg, context, exc)
        except Exception as exc:  # never crash, and never echo data in the reason
            log.exception("[%s] the %s handler failed", name, handler.__name__)
            reason = (
                f"this node failed with {type(exc).__name__} (details in its own log); "
                "it sat this round out"
            )
            return decline(msg, context, DeclineCode.DATA_UNAVAILABLE, reason)

    wrapped.__name__ = handler.__name__
    return wrapped


@app.train()
@_decline_on_error
def train(msg: Message, context: Context) -> Message:
    """Local training (client/train_handler.py): governed rows, DP-SGD charged to the
    ledger, the update back in plaintext or as ciphertext, or a decline."""
    from aidmp.client.train_handler import train_round

    return train_round(msg, context)


@app.evaluate()
@_decline_on_error
def evaluate(msg: Message, context: Context) -> Message:
    """The global model scored on this node's validation rows (client/train_handler.py):
    exact figures, or under DP noised and charged, or withheld."""
    from aidmp.client.train_handler import evaluate_round

    return evaluate_round(msg, context)


@app.query("analytics")
@_decline_on_error
def analytics(msg: Message, context: Context) -> Message:
    """A federated statistics query (client/analytics_handler.py): governed rows, noised
    partials charged to the ledger before the reply leaves, or a decline."""
    from aidmp.client.analytics_handler import answer_query

    return answer_query(msg, context)


@app.query("decrypt")
@_decline_on_error
def decrypt(msg: Message, context: Context) -> Message:
    """Under HE, the sum of a query's (or k-means round's) encrypted partials, decrypted
    for the coordinator, which holds no secret key (client/decrypt_handler.py): only a sum
    holding this node's own charged release."""
    from aidmp.client.decrypt_handler import decrypt_sum

    return decrypt_sum(msg, context)


@app.query("clustering")
@_decline_on_error
def clustering(msg: Message, context: Context) -> Message:
    """One round of a federated k-means job (client/clustering_handler.py): governed
    rows, noisy per-cluster counts and sums charged to the ledger before the reply
    leaves, or a decline."""
    from aidmp.client.clustering_handler import answer_clustering

    return answer_clustering(msg, context)


@app.query("final_model")
@_decline_on_error
def final_model(msg: Message, context: Context) -> Message:
    """The end of a job: the final global model, kept decrypted in this site's state folder
    (client/final_model.py); the reply says only whether it was kept."""
    from aidmp.client.final_model import receive_final_model

    return receive_final_model(msg, context)


@app.query("explain")
@_decline_on_error
def explain(msg: Message, context: Context) -> Message:
    """Permutation importance of the global model on this node's validation rows
    (client/explain_handler.py): noisy bounded sums charged to the ledger before the reply
    leaves, or a decline."""
    from aidmp.client.explain_handler import answer_explanation

    return answer_explanation(msg, context)
