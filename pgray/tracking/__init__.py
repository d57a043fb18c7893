"""Where results go: MLflow runs (`mlflow_runs`), Parquet and Markdown tables (`tables`),
figures (`plots`), the sweep's reports (`sweep_report`) and progress lines (`progress`)."""
