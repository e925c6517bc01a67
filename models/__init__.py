"""Pure PyTorch/numpy models: no I/O and no knowledge of Spark, Ray, MLflow or Delta."""
