"""Storage: the SQLAlchemy models, the database handle and sessions, and the chunk format of points.

Below the services; imports nothing of the API, the dashboard or the services."""
