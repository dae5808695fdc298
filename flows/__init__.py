"""Prefect flows that drive the DVC pipeline and the MLflow registry: `retrain` (flows/retrain.py), `evaluate_champion`
(flows/evaluate_champion.py) and their deployments (flows/deployments.py). See flows/README.md."""
