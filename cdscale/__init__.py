"""cdscale: distributed context distillation."""
