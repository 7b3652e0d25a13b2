"""The execution components of the seed: repository, state manager, progress tracker,
event emitter, task runner and the ExecutionService facade."""
