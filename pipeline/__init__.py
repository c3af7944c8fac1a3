"""The top floor of terrafuse: the DAG, its runners (local and Kubeflow), the CLI and the run summary."""
