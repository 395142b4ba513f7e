"""The domain: runs, jobs and their status machine, manifests, object keys, record counting and the one error tree. Standard library and pydantic only."""
