"""Test helpers, one home each. Fixture plugins (registered in tests/conftest.py) are marked *.

- paths: where the repository, the test data and the real Messenger payloads are
- home: the test secrets, a data directory with a campaign (shared or single-use codes), its environment
- payloads: webhook bodies shaped like the platform's
- builders: events and clocks as tests build them
- campaigns: the example and single-use campaigns, and what the flow makes of clicks
- in_process: the app in-process through httpx's ASGI transport, and signed webhook posts
- mock_graph: the Graph API as httpx.MockTransport handlers
- fake_graph*: the Graph API as a real HTTP server on loopback (`graph`)
- bot_process: the bot in its own process on a real port, and `python -m bot` run to its end
- stores*: the transactional store on SQLite and PostgreSQL (`database_url`, `store`, `database`)
- postgres*: a real PostgreSQL server for the session (`postgres_database_url`, …)
- s3*: a moto S3 server for the session (`s3_endpoint`, `bucket`) and readers of what was stored
- lambda_events: API Gateway events for the Lambda handler
- dashboard: the Voilà dashboard on a free port, and its KPI tiles as shown
- browser: headless Chromium through Playwright
- ports: a free TCP port on loopback
- reference_metrics: the metrics computed in plain Python, for the DuckDB queries to agree with
- engines: Spark's figures against DuckDB's, equal to within rounding
"""
