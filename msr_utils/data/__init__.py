"""Data stage (01): raw files -> canonical parquet tables -> k-core -> splits with negatives."""
