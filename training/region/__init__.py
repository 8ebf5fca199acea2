"""The region encoder (seed 003): a CLIP image tower with an alpha (mask) input.

It describes one region of a frame and checks an instance the pixel model proposes.
"""
