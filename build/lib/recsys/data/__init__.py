"""Raw logs and synthetic data to Parquet, and Parquet to TorchRec batches."""
