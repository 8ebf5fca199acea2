"""Commands that join the parts: they may import training, model_export and service alike.

Nothing in common, training, model_export or service imports this package.
"""
