"""Helpers for testing gdmd and gdmd plugins.

Installing gdmd registers the pytest plugin :mod:`gdmd.testing.plugin` (entry point
``pytest11``), which provides the fixtures ``gdmd_pm`` and ``gdmd_registries``.
"""
