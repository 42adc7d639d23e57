"""qbench's built-in plugins, installed as the import package ``qbench_plugins``.

Each module is registered through the ``qbench`` entry-point group exactly as a
third-party plugin is, and uses only qbench's public API.
"""
