"""Model lifecycle in the MLflow registry: register evaluated generators, promote by policy, roll back, load."""
