"""The example configs (``<algo>_<env>.yaml``) and scripts.

The directory is installed as ``agentrl.examples`` (pyproject.toml), so ``agentrl compare`` finds the
configs of the built-in environments outside a clone too; in a clone it reads them from here.
"""
