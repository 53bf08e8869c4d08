"""aidmp: federated learning and privacy-preserving analytics for institutions.

This package holds what every room of the project shares (errors, atomic file
writes, the run configuration) and the `aidmp` command line. It imports none of
`server`, `client` or `simulations` at module level except from the CLI.
"""

__version__ = "0.1.0"
