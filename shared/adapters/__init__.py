"""Adapters: COS, SQL state, SCF dispatch, webhooks and HTTP helpers, each mapping its SDK's errors into the domain error tree at its edge."""
