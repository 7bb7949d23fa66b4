"""The built-in experiments (see `engine.experiment.BUILT_IN`); each makes its own data."""
