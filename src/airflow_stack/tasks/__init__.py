"""The invoke tasks: one module per namespace, each a thin call into the package."""
