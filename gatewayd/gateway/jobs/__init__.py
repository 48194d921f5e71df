"""Durable async jobs: a request accepted now, run through the inference path when capacity allows.

model.py    the JobState lifecycle and the Job record (pure)
store.py    the JobStore interface and its SQLite engine (a table in the store file, own migrations)
worker.py   the JobRunner: claims with leases, runs, retries, hands results to webhooks
webhook.py  signed deliveries of terminal states, with backoff
routes.py   the /v1/jobs blueprint of the Quart app
"""
