"""lclr-shapes: a procedural world of shapes with known factors, the
factor predictor, the quality bar for generators and the ``shapes``
evaluator. See :mod:`lclr_shapes.render` for the world itself."""
