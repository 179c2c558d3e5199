"""Training: one spec (spec.py) from which the API schema, the CLI options and the
worker's configuration derive; the run service (service.py), the pipeline that cuts
chips, trains, scores and exports one version (pipeline.py), and the loop's parts
(loop.py, losses.py, augment.py, distributed.py, checkpoints.py). See
docs/architecture.md for which module holds what.
"""
