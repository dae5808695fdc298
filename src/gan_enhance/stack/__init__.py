"""The team stack: PostgreSQL, an S3-compatible store, the MLflow and Prefect servers on 127.0.0.1, data under one
folder, settings and random secrets in a generated .env. The project uses it by configuration only
(`python -m gan_enhance.stack env` prints the exports); see README.md, "The team stack"."""
