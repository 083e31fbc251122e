"""What MLflow loads: the pyfunc model file (logged as code, not pickled)."""
