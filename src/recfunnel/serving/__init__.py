"""Serving: the Pipeline (recommend_for_user), the REST service, live ratings and the trace."""
