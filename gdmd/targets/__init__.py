"""The built-in gradient-target strategies: ``dmd``, ``gdmd``, ``dmdr``, ``reward-weighted``.

Each is a plugin component registered through :func:`gdmd_register_targets`; see
:class:`gdmd.interfaces.TargetStrategy` for the contract.
"""
