"""Networks built by name, and model artifacts (safetensors weights + JSON card)."""
