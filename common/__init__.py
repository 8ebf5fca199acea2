"""What training and the service must agree on: classes, image normalisation, tiling.

Both sides import these definitions from here so that a model is served with exactly
the geometry and preprocessing it was trained with. Only numpy and OpenCV are needed.
"""
