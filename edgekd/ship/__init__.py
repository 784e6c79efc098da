"""Shipping a run to a device (`edgekd deploy`): bundle, transfer over the user's OpenSSH,
verification on arrival, the harness run there, results back into the run directory.

Named `ship` so that nothing here shadows the top-level, device-side `deploy` package.
"""

from edgekd.ship.remote import DeployOptions, deploy_run

__all__ = ["DeployOptions", "deploy_run"]
